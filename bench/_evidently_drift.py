"""Evidently's embedding drift on saved matrices; run by bench/drift_cost.py in .venv-bench.

    .venv-bench/bin/python bench/_evidently_drift.py REF.npy CUR.npy

Prints one JSON object (last line of stdout). Timings, all in seconds:
  * import_s: ``import evidently`` and its embedding-drift modules;
  * method_s: Evidently's default embedding drift method alone on in-memory DataFrames of the two
    matrices: ``ModelDriftMethod`` (domain classifier: SGD logistic regression on a 50/50 split
    of reference + current rows, ROC AUC on the held-out half, drift if AUC > 0.55; the
    default ``EmbeddingsDriftMetric`` picks when the reference has >= 1000 rows);
  * report_s: what a user runs, ``Report([EmbeddingsDrift(...)]).run(current, reference)`` on
    ``Dataset.from_pandas`` of the same frames, Dataset construction included. Besides the
    same drift method it fits a t-SNE of up to 2,500 + 2,500 rows for its plot.
Nothing here embeds texts: both matrices are embeddings already.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np


def main() -> None:
    ref_path, cur_path = sys.argv[1:3]
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    import evidently
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model
    from evidently.metrics import EmbeddingsDrift

    import_s = time.perf_counter() - start

    ref = np.load(ref_path)
    cur = np.load(cur_path)
    cols = [f"e{i}" for i in range(ref.shape[1])]
    ref_df = pd.DataFrame(ref, columns=cols)
    cur_df = pd.DataFrame(cur, columns=cols)

    # The default EmbeddingsDriftMetric uses: model(bootstrap=reference rows < 1000).
    method = model(bootstrap=ref.shape[0] < 1000)
    start = time.perf_counter()
    # The method adds a target column to its inputs: give it copies (copying is timed: the
    # metric slices the embedding columns out of the dataset, which copies too).
    score, detected, name = method(cur_df.copy(), ref_df.copy())
    method_s = time.perf_counter() - start

    definition = DataDefinition(embeddings={"emb": cols})
    start = time.perf_counter()
    current = Dataset.from_pandas(cur_df, data_definition=definition)
    reference = Dataset.from_pandas(ref_df, data_definition=definition)
    snapshot = Report([EmbeddingsDrift(embeddings_name="emb")]).run(current, reference)
    report_s = time.perf_counter() - start
    report_score = snapshot.dict()["metrics"][0]["value"]

    print(
        json.dumps(
            {
                "evidently": evidently.__version__,
                "method": name,
                "reference_rows": int(ref.shape[0]),
                "current_rows": int(cur.shape[0]),
                "drift_score": float(score),
                "drift_detected": bool(detected),
                "threshold": method.threshold,
                "bootstrap": bool(method.bootstrap),
                "report_drift_score": float(report_score),
                "import_s": import_s,
                "method_s": method_s,
                "report_s": report_s,
            }
        )
    )


if __name__ == "__main__":
    main()
