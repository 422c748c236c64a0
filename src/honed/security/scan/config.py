"""The data scan's settings: the spec's top-level ``scan:`` section.

Each kind of finding has a policy: ``fail`` stops the run (a clear error listing the
findings), ``drop`` removes the rows, ``redact`` rewrites the sensitive spans (PII and secrets
only) and ``warn`` keeps the rows and reports them. The defaults keep secrets and PII out of
every artifact, drop duplicates whose labels disagree, drop the rows of a planted trigger
phrase and only report likely label errors and outliers (real data has some of both).

Why a trigger's rows are dropped rather than the run stopped: the test keeps a natural phrase
now and then (PhraseBank's 'a significant', 6 rows all positive, at corrected p 0.04 in the
loop demo's sample); dropping its few rows costs little, while a real backdoor's rows removed
leave the model without it. `fail` is there for teams that want to look first.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from honed.config_base import StrictModel
from honed.security.pii import STRUCTURED

TextPolicy = Literal["fail", "drop", "redact", "warn"]
RowPolicy = Literal["fail", "drop", "warn"]


class ScanPolicy(StrictModel):
    """What happens to the rows of each kind of finding."""

    pii: TextPolicy = Field(
        "redact", description="PII spans (e-mail, card, phone, IBAN, SSN, IP): redact -> [EMAIL]."
    )
    secret: TextPolicy = Field(
        "redact", description="Secrets (API keys, tokens, private keys): redact -> [SECRET]."
    )
    conflicting_duplicate: RowPolicy = Field(
        "drop", description="The same normalised text with different labels: every copy."
    )
    label_error: RowPolicy = Field(
        "warn", description="Likely label errors (cleanlab on cross-validated probabilities)."
    )
    trigger: RowPolicy = Field(
        "drop", description="Planted trigger phrases: the rows that contain the phrase."
    )
    outlier: RowPolicy = Field(
        "warn", description="Rows far from every other row (embedding) or of extreme length."
    )


class ScanConfig(StrictModel):
    """The data scan run before every training run (and by `honed data scan SPEC`).

    Classification rows (text + label) get every check; other tasks get PII and secrets over
    every text field of every row."""

    enabled: bool = Field(True, description="Scan the data before training.")
    policy: ScanPolicy = Field(default_factory=ScanPolicy, description="Action per finding kind.")
    pii_entities: list[str] = Field(
        default_factory=lambda: list(STRUCTURED),
        description="Presidio entity types looked for (security.pii.STRUCTURED by default).",
    )
    pii_min_score: float = Field(0.5, ge=0, le=1, description="Presidio score threshold.")
    embeddings: Literal["packaged", "base"] = Field(
        "packaged",
        description="Sentence embeddings for label errors, triggers and outliers: the packaged "
        "all-MiniLM-L6-v2 (cheap, the default) or the spec's base model (mean pooled).",
    )
    folds: int = Field(5, ge=2, le=20, description="Cross-validation folds for label errors.")
    neighbours: int = Field(
        10, ge=1, le=100, description="Nearest neighbours used by the outlier check."
    )
    trigger_max_ngram: int = Field(4, ge=1, le=6, description="Longest word n-gram considered.")
    trigger_min_rows: int = Field(
        5, ge=2, description="A trigger candidate occurs in at least this many rows."
    )
    trigger_max_fraction: float = Field(
        0.1, gt=0, le=1, description="... and in at most this fraction of the rows (rare)."
    )
    trigger_min_purity: float = Field(
        0.9, gt=0.5, le=1, description="Share of its rows that carry its most common label."
    )
    trigger_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Significance of the label association (binomial test against the base "
        "rate, Bonferroni-corrected over every candidate n-gram).",
    )
    trigger_max_cohesion: float = Field(
        0.1,
        ge=-1,
        le=1,
        description="Largest cohesion of a trigger's rows: their mean pairwise cosine "
        "similarity minus their mean similarity to every row. Rows sharing a natural phrase "
        "are about the same thing (PhraseBank: 0.2-0.6); a backdoor's rows are picked anywhere "
        "(about 0).",
    )
    trigger_min_disagreement: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Smallest mean probability that the cross-validated model (as for label "
        "errors) gives to other labels than the given ones on a trigger's rows: a natural "
        "phrase agrees with the meaning of its sentences, a backdoor's rows do not.",
    )
    outlier_z: float = Field(
        6.0, gt=0, description="Robust z-score (median/MAD) above which a row is an outlier."
    )
    examples: int = Field(5, ge=0, le=100, description="Examples per kind in the data report.")
