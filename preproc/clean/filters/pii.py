"""PII redaction: e-mail addresses, IPv4/IPv6 addresses and (opt-in) phone numbers.

FineWeb (Penedo et al. 2024, arXiv:2406.17557) anonymizes e-mail and public IP addresses
in its release; that is this step's default. Phone numbers are opt-in: every pattern that
catches real ones also catches ISBN fragments, numeric tables and version strings in
technical text.

Finding candidates is vectorized (RE2 over the Arrow column). E-mails are replaced with RE2
too; IP and phone candidates are confirmed per match in Python (``ipaddress`` decides
what is a valid, public address), which runs only for the few documents that contain
something address-shaped.

Counters: ``pii_v1:docs`` (documents changed) and ``pii_v1:<kind>`` (spans replaced) for
``emails``, ``ipv4``, ``ipv6``, ``phones``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from preproc.clean.filters._text import as_string_array, in_scope, with_type_of
from preproc.clean.steps import Mapper, StepOptions, register, replace_text

# RFC 5322 "dot-atom" local parts as people write them, a dotted host name, a letter TLD.
EMAIL_RE2 = (r"[A-Za-z0-9._%+\-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+"
             r"[A-Za-z]{2,24}\b")

_IPV4_CAND = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
_IPV4_PY = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
# Two hex groups around "::", or the full eight groups (times like 12:30:45 are neither).
_IPV6_CAND = (r"[0-9A-Fa-f]{1,4}::[0-9A-Fa-f]{1,4}|::[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]|"
              r"[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}::|(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]")
_IPV6_PY = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
                      r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})(?![\w:])")
_PHONE_CAND = r"\d{3}\)?[\-. ]\d{3}[\-. ]\d{4}|\+\d{1,3}[\-. ]?\(?\d"
# North-American numbers: (NXX) NXX-XXXX, NXX-NXX-XXXX, NXX.NXX.XXXX, optional +1.
_NANP_PY = re.compile(r"(?<![\w+\-.])(?:\+1[\-. ]?)?(?:\((\d{3})\) ?|(\d{3})([\-. ]))"
                      r"(\d{3})([\-. ])(\d{4})(?![\w\-])")
# International numbers written with a leading +country code, 8 to 15 digits (E.164).
_INTL_PY = re.compile(r"(?<![\w+])\+\d{1,3}(?:[\-. ]?\(?\d{1,4}\)?){2,5}(?![\w\-])")


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not (ip.is_multicast or ip.is_reserved)


def _ip_checker(version: int, skip_private: bool) -> Callable[[str], bool]:
    def ok(s: str) -> bool:
        try:
            ip = ipaddress.ip_address(s)
        except ValueError:
            return False
        if ip.version != version:
            return False
        if version == 6 and sum(1 for g in s.split(":") if g) < 2:
            return False   # "::", "::1"-like tokens in code (slices, scopes) are not addresses
        return _public(ip) if skip_private else True
    return ok


def _nanp_ok(m: re.Match) -> bool:
    area = m.group(1) or m.group(2)
    if m.group(3) is not None and m.group(3) != m.group(5):
        return False   # mixed separators: 555-123.4567 is not how numbers are written
    # NANP area and exchange codes start with 2-9.
    return area[0] in "23456789" and m.group(4)[0] in "23456789"


def _intl_ok(m: re.Match) -> bool:
    return 8 <= sum(c.isdigit() for c in m.group(0)) <= 15


class PiiOptions(StepOptions):
    # PII is redacted in every source (code has author e-mails too); globs to leave alone.
    skip_sources: tuple[str, ...] = ()
    emails: bool = True
    ipv4: bool = True
    ipv6: bool = True
    # Opt-in: see the module docstring for why.
    phones: bool = False
    # Leave private, loopback, link-local, multicast, reserved and documentation addresses
    # (10.0.0.1, 127.0.0.1, 192.168.x.x, 255.255.255.0, ::1, fe80::...) as they are: they
    # identify nobody and are common in technical text.
    skip_private_ips: bool = True
    email_placeholder: str = "<EMAIL>"
    ip_placeholder: str = "<IP_ADDRESS>"
    phone_placeholder: str = "<PHONE>"
    # Same as skip_sources but for the `language` column; null = every language.
    languages: tuple[str, ...] | None = Field(default=None)


@register
class PiiV1(Mapper):
    """Replaces e-mail addresses, public IPv4/IPv6 addresses and (opt-in) phone numbers
    with placeholders; counts documents changed and spans replaced."""

    name = "pii_v1"
    family = "pii"
    order = 90
    default_on = True
    Options = PiiOptions

    def map(self, batch: pa.RecordBatch, counters: dict[str, int]) -> pa.RecordBatch:
        o: PiiOptions = self.options  # type: ignore[assignment]
        n = batch.num_rows
        if n == 0:
            return batch
        scope = in_scope(batch, o.skip_sources, o.languages)
        if not scope.any():
            return batch
        text = as_string_array(batch.column("text"))
        # One RE2 pass finds the documents with anything address-shaped; the per-kind
        # patterns then only read those.
        kinds = [(o.emails, "@"), (o.ipv4, _IPV4_CAND), (o.ipv6, _IPV6_CAND),
                 (o.phones, _PHONE_CAND)]
        any_rx = "|".join(f"(?:{rx})" for on, rx in kinds if on)
        if not any_rx:
            return batch
        scope &= pc.match_substring_regex(text, any_rx).to_numpy(zero_copy_only=False)
        if not scope.any():
            return batch
        touched = np.zeros(n, dtype=bool)
        total = {}

        rows = np.flatnonzero(scope)

        def candidates(rx: str) -> np.ndarray:
            sub = text.take(pa.array(rows))
            mask = np.zeros(n, dtype=bool)
            mask[rows] = pc.match_substring_regex(sub, rx).to_numpy(zero_copy_only=False)
            return mask

        def apply(kind: str, cand_mask: np.ndarray, fn) -> None:
            nonlocal text
            idx = np.flatnonzero(cand_mask)
            if len(idx) == 0:
                return
            sub = text.take(pa.array(idx))
            new, counts = fn(sub)
            changed = counts > 0
            if not changed.any():
                return
            mask = np.zeros(n, dtype=bool)
            mask[idx[changed]] = True
            text = pc.replace_with_mask(text, pa.array(mask), new.filter(pa.array(changed)))
            touched[idx[changed]] = True
            total[kind] = int(counts.sum())

        if o.emails:
            cand = candidates("@")
            ph = o.email_placeholder.replace("\\", "\\\\")
            apply("emails", cand, lambda s: (
                pc.replace_substring_regex(s, EMAIL_RE2, ph),
                pc.count_substring_regex(s, EMAIL_RE2).to_numpy(zero_copy_only=False)))
        if o.ipv4:
            cand = candidates(_IPV4_CAND)
            ok4 = _ip_checker(4, o.skip_private_ips)
            apply("ipv4", cand, lambda s: _python_sub(s, _IPV4_PY, o.ip_placeholder,
                                                      lambda m: ok4(m.group(0))))
        if o.ipv6:
            cand = candidates(_IPV6_CAND)
            ok6 = _ip_checker(6, o.skip_private_ips)
            apply("ipv6", cand, lambda s: _python_sub(s, _IPV6_PY, o.ip_placeholder,
                                                      lambda m: ok6(m.group(0))))
        if o.phones:
            cand = candidates(_PHONE_CAND)

            def phones(s):
                s, c1 = _python_sub(s, _NANP_PY, o.phone_placeholder, _nanp_ok)
                s, c2 = _python_sub(s, _INTL_PY, o.phone_placeholder, _intl_ok)
                return s, c1 + c2
            apply("phones", cand, phones)

        if touched.any():
            counters[f"{self.name}:docs"] = counters.get(f"{self.name}:docs", 0) + int(touched.sum())
            for kind, k in total.items():
                key = f"{self.name}:{kind}"
                counters[key] = counters.get(key, 0) + k
            return replace_text(batch, with_type_of(text, batch.column("text")))
        return batch


def _python_sub(strings: pa.Array, rx: re.Pattern, placeholder: str,
                accept: Callable[[re.Match], bool]) -> tuple[pa.Array, np.ndarray]:
    """``rx.sub`` on each string, replacing only matches ``accept`` approves; with counts."""
    out = []
    counts = np.zeros(len(strings), dtype=np.int64)
    for i, s in enumerate(strings.to_pylist()):
        k = 0

        def repl(m: re.Match) -> str:
            nonlocal k
            if accept(m):
                k += 1
                return placeholder
            return m.group(0)
        out.append(rx.sub(repl, s))
        counts[i] = k
    return pa.array(out, type=strings.type), counts
