"""Schemas, the examples in docs/protocol.md, and decoding client frames."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from bixweb import assets, protocol
from bixweb.errors import ProtocolError
from bixweb.model import CHANNELS, canonical_symbol

ROOT = Path(__file__).resolve().parent.parent
SERVER_TYPES = set(assets.SERVER_MESSAGES)  # the lists the start-up check requires a schema for
CLIENT_TYPES = set(assets.CLIENT_MESSAGES)


def test_every_schema_file_is_a_valid_draft_2020_12_schema(schemas: protocol.SchemaSet) -> None:
    assert len(schemas.files) == len(SERVER_TYPES) + len(CLIENT_TYPES) + 2  # + common.json, ui/action.json
    for name, schema in schemas.files.items():
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        assert schema["$id"].endswith("/schemas/" + name), name


def test_there_is_a_schema_per_message_type_and_direction(schemas: protocol.SchemaSet) -> None:
    assert set(schemas.validators["server"]) == SERVER_TYPES
    assert set(schemas.validators["client"]) == CLIENT_TYPES
    assert set(schemas.validators["ui"]) == {"action"}
    assert len(SERVER_TYPES) == 14 and len(CLIENT_TYPES) == 9  # a type added or dropped: update the lists
    assert protocol.DESK_TYPES <= CLIENT_TYPES


def doc_examples() -> list[dict[str, object]]:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)]


def test_every_example_in_the_protocol_doc_matches_its_schema(schemas: protocol.SchemaSet) -> None:
    examples = doc_examples()
    seen = set()
    for example in examples:
        kind = str(example["type"])
        direction = "client" if kind in CLIENT_TYPES else "server"
        assert schemas.errors(direction, example) == [], example
        seen.add(kind)
    assert seen == SERVER_TYPES | CLIENT_TYPES, "every message type has an example"


def test_a_broken_message_inside_a_batch_is_caught(schemas: protocol.SchemaSet) -> None:
    trade = {
        "type": "trade",
        "ts": 1,
        "epoch": 1,
        "symbol": "BTCUSDT",
        "seq": 1,
        "data": {"id": 1, "price": 1.0, "qty": 1.0, "side": "buy", "time": 1},
    }
    assert schemas.errors("server", {"type": "batch", "messages": [trade]}) == []
    broken = {**trade, "data": {**trade["data"], "side": "up"}}
    assert schemas.errors("server", {"type": "batch", "messages": [trade, broken]})


def test_batch_frame_wraps_encoded_messages_without_decoding_them() -> None:
    one = protocol.encode({"type": "pong", "ts": 1})
    assert protocol.batch_frame([one]) is one
    frame = json.loads(protocol.batch_frame([one, one]))
    assert frame == {"type": "batch", "messages": [{"type": "pong", "ts": 1}] * 2}


@pytest.mark.parametrize(
    ("frame", "code", "path"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_message", "$"),
        (b'{"id": 1}', "invalid_message", "$.type"),
        (b'{"type": "launch", "id": 1}', "unknown_type", "$.type"),
        (b'{"type": "subscribe", "symbols": ["btc/usdt"], "channels": ["ticker"]}', "invalid_message", "$.symbols[0]"),
        (
            '{"type": "subscribe", "symbols": ["BTCUSDT", "\uff22\uff34\uff23"], "channels": ["ticker"]}'.encode(),
            "invalid_message",
            "$.symbols[1]",
        ),
        (b'{"type": "subscribe", "symbols": [], "channels": ["ticker"]}', "invalid_message", "$.symbols"),
        (b'{"type": "subscribe", "symbols": ["BTCUSDT"]}', "invalid_message", "$"),
        (b'{"type": "ping", "extra": true}', "invalid_message", "$"),
    ],
)
def test_bad_client_frames_raise_protocol_errors_with_code_and_path(frame: bytes, code: str, path: str | None) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_client_message(frame)
    assert caught.value.code == code
    assert caught.value.path == path


def test_client_messages_name_symbols_in_any_case_and_are_read_in_upper_case() -> None:
    subscribe = protocol.parse_client_message(
        '{"type": "subscribe", "id": 1, "symbols": ["btcusdt", "EthUsdt", "*"], "channels": ["trades"],'
        ' "since": {"epoch": 3, "seq": {"trades:BTCUSDT": 7}}}'
    )
    assert subscribe == protocol.Subscribe(
        ("BTCUSDT", "ETHUSDT", "*"), ("trades",), 1, protocol.Since(3, {"trades:BTCUSDT": 7})
    )
    with pytest.raises(ProtocolError) as refused:  # stream keys are the server's own, as it sent them
        protocol.parse_client_message(
            '{"type": "subscribe", "symbols": ["btcusdt"], "channels": ["trades"],'
            ' "since": {"epoch": 3, "seq": {"trades:btcusdt": 7}}}'
        )
    assert refused.value.code == "invalid_message" and refused.value.path is not None
    assert refused.value.path.startswith("$.since.seq")
    unsubscribe = protocol.parse_client_message(
        '{"type": "unsubscribe", "symbols": ["solusdt"], "channels": ["ticker"]}'
    )
    assert unsubscribe == protocol.Unsubscribe(("SOLUSDT",), ("ticker",), None)
    desk = protocol.parse_client_message('{"type": "annotation_add", "symbol": "btcUSDT", "price": 1, "label": "x"}')
    assert isinstance(desk, protocol.DeskRequest) and desk.fields["symbol"] == "BTCUSDT"
    every = protocol.parse_client_message('{"type": "annotation_list"}')
    assert isinstance(every, protocol.DeskRequest) and "symbol" not in every.fields


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("btcusdt", "BTCUSDT"), ("BtcUsdt", "BTCUSDT"), ("*", "*"), ("\u0131njusdt", "\u0131njusdt")],
)
def test_only_ascii_letters_are_folded_to_upper_case(name: str, canonical: str) -> None:
    assert canonical_symbol(name) == canonical  # a dotless i must not become the I of INJUSDT


def test_the_request_id_survives_into_the_error() -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_client_message('{"type": "subscribe", "id": "abc", "symbols": ["x"], "channels": ["ticker"]}')
    assert caught.value.request_id == "abc"
    message = protocol.error_message(5, caught.value)
    assert protocol.schemas().errors("server", message) == []
    assert message["id"] == "abc"


def test_good_client_frames_decode_to_values() -> None:
    assert protocol.parse_client_message('{"type":"ping","id":3}') == protocol.Ping(3)
    sub = protocol.parse_client_message('{"type":"subscribe","symbols":["BTCUSDT"],"channels":["trades"],"id":"s1"}')
    assert sub == protocol.Subscribe(("BTCUSDT",), ("trades",), "s1")
    unsub = protocol.parse_client_message('{"type":"unsubscribe","symbols":["*"],"channels":["book"]}')
    assert unsub == protocol.Unsubscribe(("*",), ("book",), None)


def test_resolve_streams_expands_star_and_refuses_unknown_names() -> None:
    known = ["BTCUSDT", "ETHUSDT"]
    assert protocol.resolve_streams(["*"], ["ticker"], known, CHANNELS) == [
        ("ticker", "BTCUSDT"),
        ("ticker", "ETHUSDT"),
    ]
    assert protocol.resolve_streams(["ETHUSDT", "ETHUSDT"], ["book", "trades"], known, CHANNELS) == [
        ("book", "ETHUSDT"),
        ("trades", "ETHUSDT"),
    ]
    with pytest.raises(ProtocolError) as caught:
        protocol.resolve_streams(["BTCUSDT", "DOGEBTC"], ["ticker"], known, CHANNELS)
    assert (caught.value.code, caught.value.path) == ("unknown_symbol", "$.symbols[1]")
    with pytest.raises(ProtocolError) as caught:
        protocol.resolve_streams(["BTCUSDT"], ["ticker", "candles_2m"], known, CHANNELS)
    assert (caught.value.code, caught.value.path) == ("unknown_channel", "$.channels[1]")


def test_the_asyncapi_document_references_every_schema_file() -> None:
    import yaml

    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert str(doc["asyncapi"]).startswith("3.")
    refs: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                refs.add(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    resolved = {(ROOT / "docs" / ref).resolve() for ref in refs}
    assert all(path.is_file() for path in resolved), sorted(map(str, resolved))
    message_files = {p.resolve() for d in ("server", "client") for p in (ROOT / "schemas" / d).glob("*.json")}
    expected = {(ROOT / "schemas" / "server" / f"{kind}.json").resolve() for kind in SERVER_TYPES} | {
        (ROOT / "schemas" / "client" / f"{kind}.json").resolve() for kind in CLIENT_TYPES
    }
    assert message_files == expected, "a schema file that is not a known message type, or one missing"
    assert message_files <= resolved, sorted(map(str, message_files - resolved))
    messages = doc["components"]["messages"]
    assert {m["name"] for m in messages.values()} == SERVER_TYPES | CLIENT_TYPES | {"ui_fragment", "ui_form"}
    for m in messages.values():
        if m["name"] in SERVER_TYPES | CLIENT_TYPES:
            direction = "server" if m["name"] in SERVER_TYPES else "client"
            assert m["payload"]["schema"]["$ref"] == f"../schemas/{direction}/{m['name']}.json", m["name"]
    bots = doc["channels"]["bots"]["messages"]

    def names(action: str) -> set[str]:
        found = set()
        for op in doc["operations"].values():
            if op["action"] == action and op["channel"]["$ref"] == "#/channels/bots":
                for ref in op["messages"]:
                    key = bots[ref["$ref"].removeprefix("#/channels/bots/messages/")]["$ref"]
                    found.add(messages[key.removeprefix("#/components/messages/")]["name"])
        return found

    sent, received = names("send"), names("receive")
    assert sent == SERVER_TYPES
    assert received == CLIENT_TYPES
    assert {messages[m["$ref"].removeprefix("#/components/messages/")]["name"] for m in bots.values()} == (
        SERVER_TYPES | CLIENT_TYPES
    )


def test_the_book_checksum_is_crc32_of_the_documented_string() -> None:
    import zlib

    bids = [[95012.4, 0.84], [95012.0, 1.0], [0.000018, 50_000_000.0]]
    asks = [[95012.6, 1.5]]
    text = protocol.book_checksum_text(bids, asks)
    assert text == "95012.4:0.84,95012:1,0.000018:50000000|95012.6:1.5"
    assert protocol.book_checksum(bids, asks) == zlib.crc32(text.encode())
    many = [[100.0 - n, 1.0] for n in range(15)]
    assert protocol.book_checksum_text(many, []).count(",") == 9  # the top 10 levels only


def test_subscribe_with_since_decodes_to_a_resume_position() -> None:
    sub = protocol.parse_client_message(
        '{"type":"subscribe","symbols":["BTCUSDT"],"channels":["trades"],"since":{"epoch":7,"seq":{"trades:BTCUSDT":9}}}'
    )
    assert isinstance(sub, protocol.Subscribe)
    assert sub.since == protocol.Since(7, {"trades:BTCUSDT": 9})
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_client_message(
            '{"type":"subscribe","symbols":["BTCUSDT"],"channels":["trades"],"since":{"seq":{}}}'
        )
    assert caught.value.path == "$.since"
