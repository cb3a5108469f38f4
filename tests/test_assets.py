"""The server's own files: found in the package, complete, and a broken install refused in one line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bixweb import assets, protocol, validation
from bixweb.errors import InstallError
from bixweb.web.app import create_app
from tests.support import ROOT, fast_settings

SERVER_MODULES = ("bixweb.web", "bixweb.render", "bixweb.dashboard", "bixweb.market", "bixweb.hub", "bixweb.brokers")
NOT_FOR_CLIENTS = ("jinja2", "aiohttp_jinja2", "redis", "aiohttp.web", *SERVER_MODULES)


def files_under(directory: Path) -> set[str]:
    return {path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file()}


def test_the_lists_name_every_file_of_the_checkout_and_nothing_else() -> None:
    assert set(assets.TEMPLATES) == files_under(ROOT / "templates")
    assert set(assets.STATIC) == files_under(ROOT / "static")
    assert set(assets.SCHEMAS) == files_under(ROOT / "schemas")
    assert len(assets.SCHEMAS) == len(set(assets.SCHEMAS))


def test_every_template_static_file_and_script_the_code_names_is_listed() -> None:
    sources = [*(ROOT / "bixweb").rglob("*.py"), *(ROOT / "templates").rglob("*.html")]
    text = "\n".join(path.read_text(encoding="utf-8") for path in sources if "vendor" not in path.parts)
    named = set(re.findall(r"[\"']((?:fragments/)?\w+\.html)[\"']", text))
    assert "dashboard.html" in named and "fragments/ticker_card.html" in named
    assert named <= set(assets.TEMPLATES)
    page = (ROOT / "templates" / "dashboard.html").read_text(encoding="utf-8")
    assert set(re.findall(r"static\(['\"]([^'\"]+)['\"]\)", page)) <= set(assets.STATIC)
    assert set(re.findall(r"vendor\(['\"]([^'\"]+)['\"]\)", page)) == set(assets.VENDOR_FILES)


def test_the_schema_set_is_what_the_list_names_and_the_protocol_builds(schemas: protocol.SchemaSet) -> None:
    assert set(schemas.files) == set(assets.SCHEMAS)
    assert set(schemas.validators["server"]) == set(assets.SERVER_MESSAGES)
    assert set(schemas.validators["client"]) == set(assets.CLIENT_MESSAGES)


def test_in_a_checkout_the_package_reaches_the_top_level_directories_through_links() -> None:
    package = assets.package_dir()
    assert package == ROOT / "bixweb"
    for name, target in (("templates", "../templates"), ("static", "../static"), ("schemas", "../schemas")):
        assert (package / name).is_symlink() and str((package / name).readlink()) == target
    assert str((package / "vendor").readlink()) == "../node_modules/htmx.org"
    assert (package / "py.typed").is_file()
    assert assets.problems() == []


def copy_of_the_package(tmp_path: Path) -> Path:
    """The package's data as a wheel installs it: plain directories with copies of the files."""
    copy = tmp_path / "bixweb"
    for name in ("templates", "static", "schemas"):
        shutil.copytree(assets.package_dir() / name, copy / name)
    for relative in assets.VENDOR_FILES.values():
        (copy / "vendor" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(assets.vendor_dir() / relative, copy / "vendor" / relative)
    return copy


@pytest.mark.parametrize(
    ("removed", "named"),
    [
        ("vendor/dist/htmx.min.js", "htmx assets missing"),
        ("vendor/dist/ext/hx-ws.min.js", "htmx assets missing"),
        ("vendor", "htmx assets missing"),
        ("templates/fragments/ticker_card.html", "page templates missing"),
        ("templates", "page templates missing"),
        ("static/bixweb.css", "static files missing"),
        ("schemas/server/welcome.json", "JSON Schemas missing"),
        ("schemas", "JSON Schemas missing"),
    ],
)
def test_a_broken_install_is_refused_with_one_line_naming_the_file_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, removed: str, named: str
) -> None:
    copy = copy_of_the_package(tmp_path)
    target = copy / removed
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    monkeypatch.setattr(assets, "package_dir", lambda: copy)
    with pytest.raises(InstallError) as refused:
        create_app(fast_settings())
    text = str(refused.value)
    assert "\n" not in text
    assert text.startswith("broken install: ") and named in text
    assert str(copy / removed) in text  # the path itself, or the first file under the removed directory
    assert "make dist" in text and "reinstall bixweb" in text


def test_an_empty_htmx_file_counts_as_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = copy_of_the_package(tmp_path)
    (copy / "vendor/dist/htmx.min.js").write_bytes(b"")
    monkeypatch.setattr(assets, "package_dir", lambda: copy)
    assert [problem.split(" (")[0] for problem in assets.problems()] == ["htmx assets missing"]


def test_in_a_checkout_missing_htmx_says_npm_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = copy_of_the_package(tmp_path)
    shutil.rmtree(copy / "vendor")
    (copy / "vendor").symlink_to("../node_modules/htmx.org")  # dangling, as in a fresh clone
    monkeypatch.setattr(assets, "package_dir", lambda: copy)
    (problem,) = assets.problems()
    assert problem.startswith(f"htmx assets missing ({copy / 'vendor/dist/htmx.min.js'} and 1 more)")
    assert problem.endswith("in a checkout run `npm ci` (make run does)")


def test_the_schema_loader_never_loads_fewer_schemas_than_the_protocol_needs(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="JSON Schemas missing"):
        validation.schemas(tmp_path)  # none at all
    shutil.copytree(assets.schema_dir(), tmp_path / "some")
    (tmp_path / "some" / "client" / "subscribe.json").unlink()
    with pytest.raises(InstallError, match=re.escape(str(tmp_path / "some" / "client" / "subscribe.json"))):
        validation.schemas(tmp_path / "some")
    shutil.copytree(assets.schema_dir(), tmp_path / "bad")
    (tmp_path / "bad" / "common.json").write_text("{not json")
    with pytest.raises(InstallError, match="common.json is unreadable"):
        validation.schemas(tmp_path / "bad")


def test_make_dist_refuses_a_wheel_without_htmx_templates_or_schemas(tmp_path: Path) -> None:
    whole = tmp_path / "whole.whl"
    with zipfile.ZipFile(whole, "w") as archive:
        for name in assets.packaged_files():
            archive.writestr(f"bixweb/{name}", "x")
    assert assets.check_wheel(whole) == []
    code_only = tmp_path / "bixweb-0-py3-none-any.whl"
    with zipfile.ZipFile(code_only, "w") as archive:
        archive.writestr("bixweb/__init__.py", "")
    result = subprocess.run(
        [sys.executable, "-m", "bixweb.assets", str(whole), str(code_only)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{code_only} is incomplete, it lacks {len(assets.packaged_files())} files (bixweb/py.typed")
    assert "npm ci" in line


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_client_library_imports_no_server_module_no_jinja_and_no_redis() -> None:
    code = f"import sys, bixweb.client; print(sorted(m for m in sys.modules if m.startswith({NOT_FOR_CLIENTS!r})))"
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


WITHOUT_REDIS = "import sys; sys.modules['redis'] = None  # as if bixweb[redis] were not installed\n"


def test_a_memory_server_builds_without_redis_and_a_redis_broker_names_the_extra() -> None:
    code = WITHOUT_REDIS + (
        "from bixweb.web.app import create_app\n"
        "from tests.support import fast_settings\n"
        "create_app(fast_settings())\n"
        "print('redis' in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None})\n"
        "from bixweb.brokers import open_broker\n"
        "open_broker('redis://127.0.0.1:6379/0')\n"
    )
    result = run_python(code)
    assert result.stdout.strip() == "False"
    assert result.stderr.strip().splitlines()[-1] == (
        "bixweb.errors.InstallError: --broker redis://127.0.0.1:6379/0: "
        "the Redis broker needs the redis package: pip install 'bixweb[redis]'"
    )


def test_the_command_says_so_in_one_line_without_redis(tmp_path: Path) -> None:
    code = WITHOUT_REDIS + "from bixweb.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"
    args = ["--port", "0", "--broker", "redis://127.0.0.1:1/0", "--data-dir", str(tmp_path)]
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()  # one line, and nothing logged before it
    assert line == (
        "bixweb: --broker redis://127.0.0.1:1/0: the Redis broker needs the redis package: pip install 'bixweb[redis]'"
    )
    assert "Traceback" not in result.stderr
