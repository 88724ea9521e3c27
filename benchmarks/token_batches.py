"""Batches by tokens against fixed batch sizes (issue #20 item 4; seeds 000 and 001's batch optimiser).

The product's encode (:func:`vector_assets.embed.embedding.encode_with_raw`) on the bundled
sample's passages (what the demo backfill embeds) and on a mix with full 248-token windows,
with batches of 16, 32, 64 and 128 texts (sentence-transformers sorts a call's texts by length,
then cuts batches of that many) and with token budgets (padded tokens per batch; fixed, or
adapting: :class:`~vector_assets.embed.embedding.TokenBudget` doubles while throughput rises).
Configurations alternate within each of ``--repeat`` rounds, so a busy machine slows them alike;
the best round of each is printed, in texts/s and real tokens/s.

``--device cuda --precision fp16`` on a GPU machine measures the GPU path (large budgets).

Usage: python benchmarks/token_batches.py [--texts 800] [--repeat 3] [--device cpu]
       [--precision fp32] [--json results/token_batches.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_backends import full_windows, sample_passages  # noqa: E402

from vector_assets.embed import embedding  # noqa: E402
from vector_assets.settings import DEFAULT_MODEL  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=800)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = embedding.load_model(DEFAULT_MODEL, args.device, args.precision)
    tokenizer = model.tokenizer
    sample = sample_passages(args.texts)
    windows = full_windows(sample, tokenizer, 248, args.texts // 4)
    sets = {"sample passages": sample, "sample + 25 % full windows": sample[: args.texts - len(windows)] + windows}
    cuda = args.device.startswith("cuda")
    configs = [("batch", n) for n in (16, 32, 64, 128)] + [("budget", n) for n in (4096, 8192, 16384)] + [("adaptive", 4096)]
    if cuda:
        configs += [("batch", 256), ("budget", 65536), ("adaptive", 16384)]
    out = {"device": args.device, "precision": args.precision, "sets": {}}
    for name, texts in sets.items():
        lengths = [min(n, model.max_seq_length) for n in tokenizer(texts, add_special_tokens=True, truncation=False, return_length=True, verbose=False)["length"]]
        tokens = sum(lengths)
        best = {c: 0.0 for c in configs}
        final_budget = {}
        embedding.encode_with_raw(model, texts[:32], 32)  # warm-up
        for _ in range(args.repeat):
            for kind, n in configs:
                budget = None
                if kind == "budget":
                    budget = embedding.TokenBudget(tokens=n, max_tokens=n, grow=False)
                elif kind == "adaptive":
                    budget = embedding.TokenBudget(tokens=n)
                started = time.perf_counter()
                embedding.encode_with_raw(model, texts, n if kind == "batch" else 64, budget=budget)
                best[(kind, n)] = max(best[(kind, n)], len(texts) / (time.perf_counter() - started))
                if kind == "adaptive":
                    final_budget[(kind, n)] = budget.tokens
        base = best[("batch", 64)]
        rows = []
        for (kind, n), rate in best.items():
            label = f"{n} texts" if kind == "batch" else (f"{n} tokens" if kind == "budget" else f"adaptive from {n} (ended at {final_budget[(kind, n)]})")
            rows.append({"batches": label, "texts_per_s": round(rate, 1), "tokens_per_s": round(rate * tokens / len(texts)), "vs_64": round(rate / base, 3)})
        out["sets"][name] = {"texts": len(texts), "mean_tokens": round(tokens / len(texts), 1), "rows": rows}
        print(f"\n{name}: {len(texts)} texts, mean {tokens / len(texts):.1f} tokens ({args.device}, {args.precision})")
        print("| batches | texts/s | tokens/s | vs 64 texts |\n|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['batches']} | {r['texts_per_s']} | {r['tokens_per_s']:,} | {r['vs_64']:.3f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
