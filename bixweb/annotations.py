"""Chart annotations as values: a labelled horizontal price line on one symbol's chart.

Annotations belong to the symbol's chart, which every page showing that
symbol renders the same way; ``owner`` says who drew the line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bixweb.alerts import RequestFields

MAX_LABEL_CHARS: Final = 60
MAX_ANNOTATIONS_PER_SYMBOL: Final = 20

TOO_MANY_ANNOTATIONS: Final = "too_many_annotations"


@dataclass(frozen=True, slots=True)
class Annotation:
    """A horizontal line at ``price`` with a ``label``, on ``symbol``'s chart."""

    id: str
    symbol: str
    price: float
    label: str
    owner: str
    created_ms: int


def annotation_from_request(
    fields: Mapping[str, Any],
    *,
    symbols: Sequence[str],
    owner: str,
    existing: Sequence[Annotation],
    new_id: str,
    now_ms: int,
    request_id: str | int | None = None,
    max_per_symbol: int = MAX_ANNOTATIONS_PER_SYMBOL,
) -> Annotation:
    """The annotation a client asks for, or :class:`~bixweb.errors.ProtocolError`; nothing is stored here.

    Fields: ``symbol``, ``price`` (a number > 0, or a decimal string) and
    ``label`` (one line, at most 60 characters, may be empty). Codes:
    ``unknown_symbol``, ``invalid_message`` with the field's path, and
    ``too_many_annotations`` (path ``$``) when the symbol's chart has
    ``max_per_symbol`` lines among ``existing`` already.
    """
    read = RequestFields(fields, request_id=request_id)
    symbol = read.symbol(symbols)
    if sum(1 for annotation in existing if annotation.symbol == symbol) >= max_per_symbol:
        raise read.refuse(
            None,
            f"{symbol} has {max_per_symbol} annotations already, the most allowed; delete one",
            TOO_MANY_ANNOTATIONS,
        )
    price = read.number("price", above=0.0)
    label = read.text("label", MAX_LABEL_CHARS)
    return Annotation(new_id, symbol, price, label, owner, now_ms)
