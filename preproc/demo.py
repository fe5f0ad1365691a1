"""``preproc demo``: a deterministic synthetic corpus, a small BPE tokenizer, a full local run.

The corpus has several languages and scripts (Latin, Cyrillic, Greek, Arabic, Devanagari,
CJK), several input formats (JSONL, JSONL.gz, JSONL.zst, Parquet), exact duplicates planted
across files, and a few malformed records, so every part of the pipeline has work to do:
the summary shows documents rejected by reason, exact duplicates removed, and tokens written.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from preproc.engine.runner import run

__all__ = ["make_corpus", "train_tokenizer", "demo_spec", "run_demo"]

# Small real vocabularies; sentences are random draws, enough to exercise scripts and BPE.
WORDS = {
    "en": "the of and to in is was for on that with as by at from his her it an be this are which "
          "river city history music water people language north ancient school market winter light "
          "garden library station mountain village story science bridge harbour forest".split(),
    "fr": "le la les de des et en un une est dans pour sur avec par au ville histoire musique eau "
          "peuple langue nord ancien école marché hiver lumière jardin bibliothèque gare montagne".split(),
    "de": "der die das und in ist von mit für auf den dem ein eine Stadt Geschichte Musik Wasser "
          "Volk Sprache Norden alt Schule Markt Winter Licht Garten Bibliothek Bahnhof Berg Dorf".split(),
    "es": "el la los las de y en un una es por con para ciudad historia música agua pueblo idioma "
          "norte antiguo escuela mercado invierno luz jardín biblioteca estación montaña aldea".split(),
    "ru": "и в на с по из что это как город история музыка вода народ язык север древний школа "
          "рынок зима свет сад библиотека вокзал гора деревня река мост лес".split(),
    "el": "και το η ο στην από με για πόλη ιστορία μουσική νερό λαός γλώσσα βορράς αρχαίος "
          "σχολείο αγορά χειμώνας φως κήπος βιβλιοθήκη σταθμός βουνό χωριό".split(),
    "ar": "في من على إلى مع عن هذا مدينة تاريخ موسيقى ماء شعب لغة شمال قديم مدرسة سوق شتاء "
          "ضوء حديقة مكتبة محطة جبل قرية نهر جسر".split(),
    "hi": "और के में की है से को पर यह शहर इतिहास संगीत पानी लोग भाषा उत्तर प्राचीन विद्यालय "
          "बाज़ार सर्दी प्रकाश बगीचा पुस्तकालय स्टेशन पहाड़ गाँव नदी".split(),
    "ja": "東京 川 都市 歴史 音楽 水 人々 言語 北 古代 学校 市場 冬 光 庭 図書館 駅 山 村 橋 森 "
          "は が を に で と の です ます した".split(),
    "zh": "城市 历史 音乐 水 人民 语言 北方 古代 学校 市场 冬天 光 花园 图书馆 车站 山 村庄 河 桥 "
          "森林 的 是 在 了 和 有 这 一个".split(),
}
_NO_SPACES = {"ja", "zh"}
_END = {"ja": "。", "zh": "。", "hi": "।", "ar": ".", "el": ".", "ru": "."}


def _doc(rng: random.Random, lang: str) -> str:
    words = WORDS[lang]
    sep = "" if lang in _NO_SPACES else " "
    paras = []
    for _ in range(rng.randint(2, 6)):
        sents = []
        for _ in range(rng.randint(3, 8)):
            s = sep.join(rng.choice(words) for _ in range(rng.randint(6, 18)))
            sents.append(s[:1].upper() + s[1:] + _END.get(lang, "."))
        paras.append(sep.join(sents))
    return "\n\n".join(paras)


def make_corpus(root: str | os.PathLike, *, docs: int = 3000, seed: int = 0) -> dict[str, Any]:
    """Write the demo inputs under ``root`` and return what was planted (for checks)."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    langs = sorted(WORDS)
    records = [{"id": f"demo-{i:05d}", "text": _doc(rng, langs[i % len(langs)]),
                "source": f"demo/{langs[i % len(langs)]}"} for i in range(docs)]
    # Exact duplicates planted across files: copies with new ids, so only the text matches.
    dup_src = rng.sample(range(docs), docs // 20)
    dups = [{"id": f"demo-copy-{k:04d}", "text": records[i]["text"], "source": records[i]["source"]}
            for k, i in enumerate(dup_src)]
    q = docs // 4
    files = {
        "web-a.jsonl": records[:q] + dups[: len(dups) // 2],
        "web-b.jsonl.gz": records[q:2 * q] + dups[len(dups) // 2:],
        "web-c.jsonl.zst": records[2 * q:3 * q],
        "web-d.parquet": records[3 * q:],
    }
    bad_lines = [b'{"id": "bad-1", "text": "unterminated', b'["not", "an", "object"]',
                 b'{"id": "bad-3", "content": "text under another key"}', b'{"id": "bad-4", "text": 42}',
                 b'{"id": "bad-5", "text": "caf\xe9 in Latin-1"}', b'{"id": "bad-6", "text": "   "}']
    for name, recs in files.items():
        lines = [json.dumps(r, ensure_ascii=False).encode() for r in recs]
        if name == "web-a.jsonl":
            for k, b in enumerate(bad_lines):   # sprinkle the malformed records
                lines.insert(7 + 50 * k, b)
        data = b"\n".join(lines) + b"\n"
        path = root / name
        if name.endswith(".gz"):
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as g:
                g.write(data)
            path.write_bytes(buf.getvalue())
        elif name.endswith(".zst"):
            path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
        elif name.endswith(".parquet"):
            pq.write_table(pa.Table.from_pylist(recs), path, row_group_size=200)
        else:
            path.write_bytes(data)
    return {"documents": docs, "exact_duplicates": len(dups), "malformed": len(bad_lines),
            "files": sorted(files)}


def train_tokenizer(texts, path: str | os.PathLike, *, vocab_size: int = 8000) -> str:
    """Train a byte-level BPE (the GPT-2 recipe) with an ``<|endoftext|>`` token; deterministic."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return str(path)


DEMO_SPEC = """\
# The demo pipeline (`preproc demo` writes the inputs and tokenizer under {root}/).
input:
  paths: ["{root}/input/*"]
output: {root}/output
shards: 4
clean:
  normalize: {{form: NFC}}
  length: {{min_chars: 50}}
dedup:
  exact: true
tokenize:
  tokenizer: {root}/tokenizer.json
  eos: true
  formats: [parquet, megatron]
"""


def demo_spec(root: str) -> str:
    return DEMO_SPEC.format(root=root)


def run_demo(root: str | os.PathLike = "preproc-demo", *, tokenizer: str | None = None,
             workers: int | None = None, force: bool = True, progress: bool = False, **overrides: Any):
    """Generate inputs (and a tokenizer unless given) under ``root`` and run the pipeline."""
    root = Path(root)
    inp = root / "input"
    planted = make_corpus(inp)
    if tokenizer is None:
        texts = []
        for p in sorted(inp.glob("*.jsonl")):
            texts += [json.loads(l)["text"] for l in p.read_bytes().splitlines() if l.startswith(b'{"id": "demo')]
        tokenizer = train_tokenizer(texts, root / "tokenizer.json")
    result = run(demo_spec(str(root)), tokenizer=tokenizer, workers=workers, force=force, progress=progress,
                 **overrides)
    return result, planted
