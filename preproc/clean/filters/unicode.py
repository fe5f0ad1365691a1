"""Unicode repair with ftfy: mojibake, HTML entities, terminal escapes; then a normal form.

ftfy (Speer 2019, https://ftfy.readthedocs.io) is pure Python and slow, so it only sees the
documents that can need it: ftfy's own mojibake detector (``ftfy.badness.BADNESS_RE``,
which gates every encoding fix) is translated to RE2 and run over the Arrow column together
with patterns for HTML entities and ANSI escapes; the rest of the batch never leaves Arrow.
The normal form is applied to every document with Arrow's utf8proc.

The default fixers repair damage (mojibake, C1 controls, ``&amp;``, terminal escapes) and
change nothing a writer meant: curly quotes, ligatures, full-width forms are kept unless
their ftfy fixers are switched on.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from preproc.clean.filters._base import CODE_SOURCES
from preproc.clean.filters._text import as_string_array, in_scope, with_type_of
from preproc.clean.steps import Mapper, Requirement, StepOptions, register, replace_text
from preproc.errors import ConfigError

_ENTITY = r"&#?[0-9A-Za-z]{1,24};"          # ftfy.chardata.HTML_ENTITY_RE
_ANSI = r"\x1b\["                            # ftfy.fixes.ANSI_RE starts so


def verbose_to_re2(pattern: str) -> str:
    """A Python ``re.VERBOSE`` pattern as an RE2 pattern that matches at least as much.

    Drops insignificant whitespace and comments outside character classes, widens ``\\s``
    and ``\\w`` to Unicode (RE2's are ASCII-only), and makes ``^`` match at line starts
    (ftfy checks each line on its own).
    """
    out = []
    i, n = 0, len(pattern)
    in_class = False
    s_cls, w_cls = r"\s\pZ\x{85}\x{1c}-\x{1f}", r"\pL\pN_"
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "s":
                out.append(s_cls if in_class else f"[{s_cls}]")
            elif nxt == "w":
                out.append(w_cls if in_class else f"[{w_cls}]")
            else:
                out.append(c + nxt)
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            if i + 1 < n and pattern[i + 1] == "]":   # "[]...]": a literal ] first
                out.append("\\]")
                i += 1
        elif c.isspace():
            pass
        elif c == "#":
            while i < n and pattern[i] != "\n":
                i += 1
        else:
            out.append(c)
        i += 1
    return "(?m)" + "".join(out)


def _badness_re2() -> str | None:
    try:
        from ftfy.badness import BADNESS_RE
    except ImportError:
        return None
    rx = verbose_to_re2(BADNESS_RE.pattern)
    try:
        pc.match_substring_regex(pa.array(["x"]), rx)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return rx


FTFY = Requirement("ftfy", "ftfy", "filters")


class UnicodeOptions(StepOptions):
    # Code keeps its bytes: string literals in tests and codec tables look like mojibake.
    skip_sources: tuple[str, ...] = Field(default=CODE_SOURCES)
    # ftfy fixers (https://ftfy.readthedocs.io/en/latest/config.html), repair only by default.
    fix_encoding: bool = True
    unescape_html: Literal["auto"] | bool = "auto"
    remove_terminal_escapes: bool = True
    fix_c1_controls: bool = True
    fix_latin_ligatures: bool = False
    fix_character_width: bool = False
    uncurl_quotes: bool = False
    # Normal form applied to every document in scope after the fixes.
    normalization: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = "NFC"


@register
class UnicodeV1(Mapper):
    """ftfy repair of the documents that need it, then Unicode normalization.

    Counter: ``unicode_v1:docs_fixed`` (documents ftfy changed)."""

    name = "unicode_v1"
    family = "unicode"
    order = 5
    default_on = False
    Options = UnicodeOptions
    requires = (FTFY,)

    def setup(self) -> None:
        if hasattr(self, "_config"):
            return
        try:
            import ftfy
        except ImportError as e:
            raise ConfigError(f"clean.unicode: needs {FTFY.package}, which cannot be imported ({e}); "
                              f"{FTFY.install}") from None
        o: UnicodeOptions = self.options  # type: ignore[assignment]
        self._fix = ftfy.fix_text
        self._config = ftfy.TextFixerConfig(
            unescape_html=o.unescape_html, remove_terminal_escapes=o.remove_terminal_escapes,
            fix_encoding=o.fix_encoding, fix_c1_controls=o.fix_c1_controls,
            fix_latin_ligatures=o.fix_latin_ligatures,
            fix_character_width=o.fix_character_width, uncurl_quotes=o.uncurl_quotes,
            fix_line_breaks=False, fix_surrogates=False, remove_control_chars=False,
            normalization=None, explain=False)
        parts = []
        if o.fix_latin_ligatures or o.fix_character_width or o.uncurl_quotes:
            parts.append(r"[^\x00-\x7f]")       # their characters are all non-ASCII
        elif o.fix_encoding or o.fix_c1_controls:
            bad = _badness_re2()
            parts.append(bad if bad is not None else r"[^\x00-\x7f]")
        if o.unescape_html:
            parts.append(_ENTITY)
        if o.remove_terminal_escapes:
            parts.append(_ANSI)
        self._candidates = "|".join(f"(?:{p})" for p in parts) if parts else None

    def map(self, batch: pa.RecordBatch, counters: dict[str, int]) -> pa.RecordBatch:
        o: UnicodeOptions = self.options  # type: ignore[assignment]
        self.setup()
        n = batch.num_rows
        scope = in_scope(batch, o.skip_sources, None)
        if n == 0 or not scope.any():
            return batch
        text = as_string_array(batch.column("text"))
        if self._candidates is not None:
            cand = pc.match_substring_regex(text, self._candidates).to_numpy(zero_copy_only=False)
            idx = np.flatnonzero(cand & scope)
            if len(idx):
                old = text.take(pa.array(idx)).to_pylist()
                new = [self._fix(t, self._config) for t in old]
                changed = np.array([a != b for a, b in zip(old, new)], dtype=bool)
                if changed.any():
                    mask = np.zeros(n, dtype=bool)
                    mask[idx[changed]] = True
                    repl = pa.array([t for t, c in zip(new, changed) if c], type=text.type)
                    text = pc.replace_with_mask(text, pa.array(mask), repl)
                    key = f"{self.name}:docs_fixed"
                    counters[key] = counters.get(key, 0) + int(changed.sum())
        if o.normalization != "none":
            normed = pc.utf8_normalize(text, o.normalization)
            text = normed if scope.all() else pc.if_else(pa.array(scope), normed, text)
        return replace_text(batch, with_type_of(text, batch.column("text")))

