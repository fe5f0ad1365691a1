"""Quality filters for the clean stage: Gopher, C4, FineWeb, language ID, PII, unicode repair.

Importing this package registers every step (see :mod:`preproc.clean.steps`). Each step is
versioned (``gopher_quality_v1``); the spec names it by family (``gopher_quality``) or by
versioned name, switches it with ``true``/``false`` and tunes it with a mapping::

    clean:
      langid: {languages: [en], min_score: 0.65}
      gopher_repetition: {max_dup_line_frac: 0.2}
      c4: {bad_words_path: s3://bucket/lists/en.txt}
      fineweb: true
      pii: {phones: false}
      unicode: true

=====================  =====  =======  =====================================================
step                   order  default  what
=====================  =====  =======  =====================================================
unicode_v1             5      off      ftfy mojibake / escape repair, then a normal form
langid_v1              30     on       fastText lid.176: ``language``, ``language_score``
gopher_quality_v2      40     on       Gopher quality rules, word rules in every script
gopher_repetition_v1   45     on       Gopher repetition rules
c4_v2                  50     off      C4 line rules (rewrite) and document rules
fineweb_v2             60     off      FineWeb line-punctuation/short-line/dup/list rules
pii_v1                 90     on       e-mail / IP (and opt-in phone) redaction
=====================  =====  =======  =====================================================

v1 of ``gopher_quality``, ``c4`` and ``fineweb`` stay registered for specs that pin them
(ASCII terminal marks, stop-word occurrences, word rules for ``en`` only, lines only). v2
knows the terminal marks of every script (``_punct``), measures words of scripts without
spaces (``gopher.word_units``), and judges the paragraphs of hard-wrapped text (``_units``).

The quality filters and language ID skip ``source`` globs ``code/*`` by default
(``skip_sources``); every filter can be limited to languages langid found (``languages``).
Each rule's default threshold cites its paper or recipe in the options' comments.
"""

from preproc.clean.filters import c4, fineweb, gopher, langid, pii, unicode  # noqa: F401  (registers the steps)

__all__: list[str] = []
