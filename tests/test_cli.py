"""The ``bixweb`` command: its subcommands and their help, and start-up errors a person can act on."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bixweb.__main__ import COMMANDS, FEED_OPTIONS, usable_data_dir
from bixweb.config import GROUPS, OPTIONS, env_name
from bixweb.errors import ConfigError
from bixweb.web.listen import listen_failure
from tests.support import ROOT, ServerProcess

Start = Callable[..., ServerProcess]
CONSOLE_SCRIPT = Path(sys.executable).parent / "bixweb"


def bixweb(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bixweb", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal's one stderr line: status 2, nothing else said, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bixweb"), result.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize("command", [[], ["serve"], ["feed", "--broker", "redis://127.0.0.1:9/0"]])
def test_a_busy_port_is_one_line_naming_the_port_and_how_to_change_it(
    busy_port: int, command: list[str], tmp_path: Path
) -> None:
    line = one_line_refusal(bixweb(*command, "--port", str(busy_port), "--data-dir", str(tmp_path)))
    assert f"port {busy_port} on 127.0.0.1 is in use" in line
    assert "--port" in line and "BIXWEB_PORT" in line and "0 picks a free one" in line


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"BIXWEB_PORT": "abc"}, "BIXWEB_PORT: 'abc' is not a port number (0-65535; 0 picks a free one)"),
        ([], {"BIXWEB_TICK_RATE": "fast"}, "BIXWEB_TICK_RATE: 'fast' is not a number above 0"),
        (["--heartbeat", "nan"], {}, "--heartbeat: 'nan' is not a number of seconds above 0"),
        ([], {"BIXWEB_SEED": "1.5"}, "BIXWEB_SEED: '1.5' is not a whole number"),
        ([], {"BIXWEB_MAX_CONNECTIONS": "-3"}, "BIXWEB_MAX_CONNECTIONS: '-3' is not a whole number of 0 or more"),
        ([], {"BIXWEB_OPEN_BOTS": "maybe"}, "BIXWEB_OPEN_BOTS: 'maybe' is not a yes/no value"),
        (["--prot", "1"], {}, "unrecognized arguments: --prot 1 (bixweb serve --help lists the options)"),
        (["feed", "--tokens-file", "x"], {}, "bixweb feed: unrecognized arguments"),
        ([], {"BIXWEB_HOST": ""}, "BIXWEB_HOST: '' is not an address"),
        (["--feed", "ftp://x"], {}, "--feed (BIXWEB_FEED): unknown feed 'ftp://x'"),
        (["bench", "--clients", "abc"], {}, "--clients: 'abc' is not a whole number"),
        (
            ["record", "--out", "x", "--duration", "abc"],
            {},
            "--duration: 'abc' is not a number",
        ),  # an unset ${HOST}: not every interface
        (["--broker", "http://user:secret@h/0"], {}, "--broker: 'http://…' is not a broker URL"),
    ],
)
def test_a_bad_option_or_variable_is_one_line_naming_it_and_what_it_expects(
    args: list[str], env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    # a free port unless the case is about the port: another bixweb on 8080 must not change the answer
    line = one_line_refusal(bixweb(*args, env={"BIXWEB_DATA_DIR": str(tmp_path), "BIXWEB_PORT": "0", **env}))
    assert expected in line, line


BAD_VALUES = ("abc", "-1", "1.5", "nan", "inf", "", " , ", "70000", "http://[")


def test_every_option_refuses_a_bad_value_by_saying_what_it_expects() -> None:
    """No parser lets Python's own words through (``invalid literal for int()``): each names the value."""
    refusing = set()
    for name, (parse, _) in OPTIONS.items():
        for bad in BAD_VALUES:
            try:
                parse(bad)
            except ValueError as exc:
                refusing.add(name)
                message = str(exc)
                assert repr(bad.strip()) in message or repr(bad) in message, (name, bad, message)
                assert "invalid literal" not in message and "could not convert" not in message, (name, message)
                assert "(" in message or "not a" in message, (name, message)  # it says what would do
    assert refusing >= set(OPTIONS) - {"host", "tokens", "token_file"}, set(OPTIONS) - refusing


def test_a_data_directory_that_cannot_be_made_is_one_line_naming_it_and_the_option(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a regular file: nothing can be made under it, not even by root")
    for command in ([], ["feed", "--broker", "redis://127.0.0.1:9/0"]):
        line = one_line_refusal(bixweb(*command, "--port", "0", "--data-dir", str(blocker / "data")))
        assert f"the data directory {blocker / 'data'} cannot be created" in line
        assert "--data-dir" in line and "BIXWEB_DATA_DIR" in line
    line = one_line_refusal(bixweb("--port", "0", env={"BIXWEB_DATA_DIR": "/proc/bixweb"}))
    assert "/proc/bixweb" in line and "BIXWEB_DATA_DIR" in line


def test_a_relative_data_directory_is_made_absolute_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert usable_data_dir("state/here") == str(tmp_path / "state" / "here")
    assert (tmp_path / "state" / "here").is_dir()
    with pytest.raises(ConfigError, match="BIXWEB_DATA_DIR"):
        usable_data_dir("/proc/nope")


def test_the_start_up_log_names_the_data_directory_and_warns_of_nothing_by_default(
    server_process: Start, tmp_path: Path
) -> None:
    server = server_process("--data-dir", str(tmp_path / "kept"))
    assert server.stop() == 0
    log = server.output.decode()
    assert f"data directory {tmp_path / 'kept'} " in log
    assert "INFO bixweb.app bot socket /ws: no tokens configured, so it serves loopback clients only" in log
    assert " WARNING " not in log and " ERROR " not in log, log


def test_the_console_script_is_python_m_bixweb() -> None:
    assert CONSOLE_SCRIPT.exists(), "pip install -e . makes the bixweb console script"
    for args in (["--help"], ["feed", "--help"], ["--version"]):
        script = subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, timeout=30, check=True)
        assert script.stdout == bixweb(*args).stdout, args
        assert script.stdout.startswith("usage: bixweb " if "--help" in args else "bixweb "), script.stdout[:80]
    assert bixweb("--version").stdout.startswith("bixweb ")


def test_the_overview_lists_the_commands_and_no_options() -> None:
    out = bixweb("--help").stdout
    assert out.startswith("usage: bixweb ")
    for command in COMMANDS:
        assert f"    {command} " in out, command
    assert "--tick-rate" not in out and "--port" not in out


def flags_in(help_text: str) -> set[str]:
    return {"--" + name.replace("_", "-") for name in OPTIONS if f"--{name.replace('_', '-')} " in help_text}


def test_serve_help_lists_every_option_in_its_group_with_its_variable() -> None:
    out = bixweb("serve", "--help").stdout
    assert out.startswith("usage: bixweb serve ")
    assert flags_in(out) == {"--" + name.replace("_", "-") for name in OPTIONS}
    for name in OPTIONS:
        assert env_name(name) in out, name
    positions = [out.index(f"\n{group}:\n") for group in GROUPS]
    assert positions == sorted(positions)  # listen, feed, limits, access, storage, logging
    for group, (_, names) in GROUPS.items():
        section = out[out.index(f"\n{group}:\n") :].split("\n\n", 2)[1]  # its title, then its options
        assert flags_in(section + " ") == {"--" + name.replace("_", "-") for name in names}, group


def test_feed_help_lists_only_what_the_feed_process_reads() -> None:
    out = bixweb("feed", "--help").stdout
    assert out.startswith("usage: bixweb feed ")
    assert flags_in(out) == {"--" + name.replace("_", "-") for name in FEED_OPTIONS}
    for absent in ("--max-connections", "--open-bots", "--watchlist", "--ui-rate", "--heartbeat", "--strict"):
        assert absent + " " not in out, absent
    assert "(default: 8079)" in out  # its probe port, beside the web service's 8080


def test_record_and_bench_help_read_bixweb_and_are_grouped() -> None:
    record = bixweb("record", "--help").stdout
    assert record.startswith("usage: bixweb record ") and "\nrecording:\n" in record and "\nfeed:\n" in record
    assert "--max-connections" not in record and "BIXWEB_TICK_RATE" in record
    bench = bixweb("bench", "--help").stdout
    assert bench.startswith("usage: bixweb bench ") and "\nload:\n" in bench and "\nserver:\n" in bench


def test_a_command_after_the_options_is_pointed_to_its_place(tmp_path: Path) -> None:
    line = one_line_refusal(bixweb("--port", "0", "feed"))
    assert "the command comes first: bixweb feed" in line
    assert "invalid choice: 'srve'" in one_line_refusal(bixweb("srve"))
    # a value that is a command's name is a value: a directory called feed
    line = one_line_refusal(bixweb("--data-dir", "feed", "--port", "abc", cwd=tmp_path))
    assert "--port: 'abc' is not a port number" in line


def test_other_listen_failures_are_one_line_saying_what_to_change(tmp_path: Path) -> None:
    line = one_line_refusal(bixweb("--host", "192.0.2.1", "--data-dir", str(tmp_path)))  # TEST-NET-1: not ours
    assert "cannot listen on 192.0.2.1: it is not an address of this machine" in line and "--host" in line
    line = one_line_refusal(bixweb("--host", "no-such-host.invalid", "--data-dir", str(tmp_path)))
    assert "cannot listen on 'no-such-host.invalid'" in line and "BIXWEB_HOST" in line
    # root may bind below 1024, so the privilege case is checked on the value alone
    refused = listen_failure(PermissionError(errno.EACCES, "Permission denied"), "0.0.0.0", 80)
    assert "port 80 on 0.0.0.0" in refused and "CAP_NET_BIND_SERVICE" in refused and "--port" in refused
