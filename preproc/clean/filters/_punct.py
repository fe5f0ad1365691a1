"""Terminal punctuation of every script, and a sentence counter that knows initials.

FineWeb's and C4's line rules ask whether a line "ends in a terminal punctuation mark". The
reference code lists ASCII marks only (``. ' " ! ?``), so a line of Japanese, Armenian,
Hindi or Urdu ending in 。 ։ । ۔ counts as unpunctuated. :data:`SENTENCE_TERMINALS` is the
Unicode ``Sentence_Terminal`` property (UAX #29; 170 code points), taken
from the ``regex`` module's property tables once and written out here, so nothing at run
time depends on ``regex`` (Arrow's RE2 knows scripts and categories, not this property);
``tests/clean/test_filters_scripts.py`` checks the table against ``regex`` where it is installed.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Unicode Sentence_Terminal: . ! ? and 。 ！ ？ ｡ (CJK), ։ (Armenian), । ॥ (Devanagari,
# Bengali, ...), ۔ ؟ (Arabic script), ። (Ethiopic), ။ (Myanmar), ។ (Khmer), ‼ ⁇ ...
# Generated with: "".join(c for c in map(chr, range(0x110000))
#                         if regex.match(r"\p{Sentence_Terminal}", c))
SENTENCE_TERMINALS = (
    "!.?։؝؞؟۔܀܁܂߹࠷࠹࠽࠾।॥၊။።፧፨᙮᜵᜶។៕᠃᠉᥄᥅᪨᪩᪪᪫\u1b4e\u1b4f᭚᭛᭞᭟᭽᭾\u1b7f᰻᰼᱾᱿․‼‽⁇⁈⁉⳹⳺⳻⸮⸼⹓⹔。꓿꘎"
    "꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫︒︕︖﹒﹖﹗！．？｡\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57"
    "\U00010f58\U00010f59\U00010f86\U00010f87\U00010f88\U00010f89\U00011047\U00011048"
    "\U000110be\U000110bf\U000110c0\U000110c1\U00011141\U00011142\U00011143\U000111c5"
    "\U000111c6\U000111cd\U000111de\U000111df\U00011238\U00011239\U0001123b\U0001123c"
    "\U000112a9\U000113d4\U000113d5\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9"
    "\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1"
    "\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641\U00011642"
    "\U0001173c\U0001173d\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b"
    "\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e"
    "\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44\U00016d6e\U00016d6f\U00016e98"
    "\U0001bc9f\U0001da88"
)
# Marks that end sentences in scripts whose Sentence_Terminal set leaves them out: the
# Greek question mark U+037E (NFC turns it into ";", which we do not count), Tibetan shad and nyis shad (Terminal_Punctuation), Thai angkhankhu/khomut (the ends of
# paragraphs and texts; Thai sentences are separated by spaces), and the ellipsis "…",
# which FineWeb counts when spelt "..." (it ends in ".").
EXTRA_TERMINALS = "\u037e\u0f0d\u0f0e\u0e5a\u0e5b\u2026"
# Closing quotation marks: FineWeb's stop characters include ' and " (a quoted sentence
# ends with the quote); their typographic and CJK forms are the same mark in other
# typography: ’ ” » › 」 』.
CLOSING_QUOTES = "'\"\u2019\u201d\u00bb\u203a\u300d\u300f"

# Marks after which a sentence goes on: comma, semicolon, colon (Latin, Arabic, CJK,
# fullwidth, Armenian, Ethiopic forms). A line ending in one continues on the next line.
CONTINUATION_MARKS = ",;:\u060c\u061b\u3001\uff0c\uff1b\uff1a\u055d\u1363\u1364\u1365"

TERMINALS = SENTENCE_TERMINALS + EXTRA_TERMINALS
LINE_END_MARKS = TERMINALS + CLOSING_QUOTES


def _re2_class(chars: str) -> str:
    out = []
    for c in chars:
        cp = ord(c)
        if c.isascii() and not c.isalnum():
            out.append("\\" + c)
        elif cp > 0x7F:
            out.append(f"\\x{{{cp:X}}}")
        else:
            out.append(c)
    return "[" + "".join(out) + "]"


# A (stripped) line whose last character is a terminal mark or a closing quote.
LINE_END_RE2 = _re2_class(LINE_END_MARKS) + "$"


def ends_with_mark(lines: pa.Array, marks: str = LINE_END_MARKS) -> np.ndarray:
    """Per line: does it end with one of ``marks`` (trailing whitespace excluded by the caller)."""
    return pc.match_substring_regex(lines, _re2_class(marks) + "$").to_numpy(zero_copy_only=False)


# -- sentences ---------------------------------------------------------------------------
# Upper-case letters of the Latin, Greek and Cyrillic alphabets (an initial is one of them).
_UPPER = "A-Z\u00c0-\u00d6\u00d8-\u00de\u0391-\u03a9\u0410-\u042f"
# Abbreviations before which a period does not end an English sentence (Punkt's English
# model learns these from text; C4's reference code uses Punkt).
_ABBREV = ("Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Jr", "Sr", "vs", "Mt", "Gen", "Col",
           "Lt", "Sgt", "Capt", "Rev", "Hon", "No", "Vol", "Fig", "cf", "e.g", "i.e", "etc")
# CJK full stops end a sentence with no space after them.
_CJK_STOPS = "\u3002\uff01\uff1f\uff61"
_CLOSE = "\"'\u2019\u201d\u00bb\u203a\u300d\u300f)\\]"
_ST_NO_DOT = re.escape("".join(c for c in TERMINALS if c not in "." + _CJK_STOPS))
_NOT_AFTER = "".join(f"(?<!\\b{re.escape(a)})" for a in _ABBREV)
# A sentence boundary inside a line: a run of terminal marks (and closing quotes/brackets)
# followed by whitespace and more text (or, after a CJK full stop, by more text directly).
# A period right after an initial ("John A. Bargh") or an abbreviation ("Mr. Smith") is
# not a boundary.
_BOUNDARY = re.compile(
    rf"(?:(?<!\b[{_UPPER}]){_NOT_AFTER}\.|[{_ST_NO_DOT}])[.{_ST_NO_DOT}]*[{_CLOSE}]*(?=[ \t]+\S)"
    rf"|[{_CJK_STOPS}]+[{_CLOSE}]*(?=[ \t]*[^\s{_CLOSE}])")


def count_sentences(lines: list[str]) -> int:
    """Sentences in ``lines`` (each non-empty line at least one): boundaries inside a line,
    plus one per non-empty line. ``"John A. Bargh went home. He slept."`` is two."""
    n = 0
    for ln in lines:
        if ln.strip():
            n += 1 + len(_BOUNDARY.findall(ln))
    return n


def sentences_per_doc(text: pa.Array) -> np.ndarray:
    """:func:`count_sentences` of every document's lines (a C-speed regex per document)."""
    findall = _BOUNDARY.findall
    out = np.zeros(len(text), dtype=np.int64)
    for i, t in enumerate(text.to_pylist()):
        if t:
            out[i] = sum(1 + len(findall(ln)) for ln in t.split("\n") if ln.strip())
    return out
