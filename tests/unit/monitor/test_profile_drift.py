from __future__ import annotations

import numpy as np
import pytest

from honed.errors import HonedError
from honed.evals.profile import (
    ProfileConfig,
    ProfileError,
    ReferenceProfile,
    build_reference_profile,
)
from honed.evals.textstats import guess_language, oov_rate
from honed.monitor.drift import ALERT, INSUFFICIENT, OK, DriftConfig, check_drift, kl, psi

FIN = [
    "Operating profit rose to EUR {} mn from EUR {} mn in the third quarter .",
    "The company said net sales for the period increased by {} % to EUR {} mn .",
    "Shares in the bank fell {} % after the results , the lowest level since {} .",
]
OFF = [
    "Write a short poem about the ocean and the {} moons of {} .",
    "Explain how to bake bread with {} cups of flour in {} steps .",
]


def _texts(templates, n, rng):
    return [
        templates[i % len(templates)].format(rng.integers(100), rng.integers(100)) for i in range(n)
    ]


class ToyEmbedder:
    """Deterministic bag-of-hashed-words unit vectors (n, 32): cheap, topic-sensitive."""

    def encode(self, texts):
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % 32] += 1.0
        out += 0.05 * np.random.default_rng(len(texts)).standard_normal(out.shape)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(0)
    texts = _texts(FIN, 600, rng)
    labels = ["positive", "negative", "neutral"] * 200
    conf = rng.uniform(0.8, 1.0, 600)
    return build_reference_profile(
        texts,
        labels=labels,
        predictions=labels,
        confidences=conf,
        embedder=ToyEmbedder(),
        config=ProfileConfig(n_clusters=4, n_components=4, sample_size=300),
    )


def test_psi_and_kl_basics():
    p = np.array([0.5, 0.5])
    assert psi(p, p) == pytest.approx(0.0) and kl(p, p) == pytest.approx(0.0)
    assert psi(p, np.array([0.9, 0.1])) > 0.2
    assert np.isfinite(psi(p, np.array([1.0, 0.0])))  # empty bin stays finite


def test_profile_roundtrip(profile, tmp_path):
    profile.save(tmp_path / "prof")
    loaded = ReferenceProfile.load(tmp_path / "prof")
    assert loaded.labels == profile.labels
    np.testing.assert_allclose(loaded.centroids, profile.centroids)
    assert loaded.embedding_sample.dtype == np.float16
    assert loaded.text["languages"]["en"] > 0.9
    assert (tmp_path / "prof" / "profile.json").is_file()


def test_load_missing_profile_names_folder(tmp_path):
    with pytest.raises(ProfileError, match="no reference profile"):
        ReferenceProfile.load(tmp_path)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ProfileError, match="at least 2 texts"):
        build_reference_profile(["one"], embeddings=np.zeros((1, 4)))
    with pytest.raises(ProfileError, match="shape"):
        build_reference_profile(["a", "b"], embeddings=np.zeros((3, 4)))
    with pytest.raises(ProfileError, match=r"\[0, 1\]"):
        build_reference_profile(["a", "b"], confidences=[0.5, 1.5], embeddings=np.eye(2))
    with pytest.raises(ValueError, match="psi_alert"):
        DriftConfig(psi_warn=0.3, psi_alert=0.2)


def test_in_domain_window_is_ok(profile):
    rng = np.random.default_rng(1)
    texts = _texts(FIN, 200, rng)
    labels = ["positive", "negative", "neutral"] * 67
    report = check_drift(
        profile,
        texts[:200],
        predictions=labels[:200],
        confidences=rng.uniform(0.8, 1, 200),
        embedder=ToyEmbedder(),
    )
    assert report.status == OK, {k: (c.value, c.status) for k, c in report.components.items()}
    assert set(report.components) >= {"embedding_cells", "embedding_pca", "domain_classifier"}


def test_shifted_window_alerts(profile):
    rng = np.random.default_rng(2)
    texts = _texts(FIN, 140, rng) + _texts(OFF, 60, rng)
    report = check_drift(
        profile,
        texts,
        predictions=["positive"] * 200,
        confidences=[0.55] * 200,
        embedder=ToyEmbedder(),
    )
    assert report.status == ALERT
    c = report.components
    assert c["domain_classifier"].status == ALERT
    assert c["predictions"].status == ALERT and c["confidence"].status == ALERT
    assert len(c["embedding_pca"].details["per_component_psi"]) == 4
    # round trip through JSON-able dict (stored for the drift-over-time report)
    from honed.monitor.drift import DriftReport

    assert DriftReport.from_dict(report.to_dict()).status == ALERT


def test_small_window_and_bad_shapes(profile):
    assert check_drift(profile, ["x"] * 10, embedder=ToyEmbedder()).status == INSUFFICIENT
    with pytest.raises(HonedError, match="must match"):
        check_drift(profile, ["x"] * 60, embeddings=np.zeros((59, 32)))
    with pytest.raises(HonedError, match="expects"):
        check_drift(profile, embeddings=np.zeros((60, 7)))


def test_ignore_leaves_component_out_of_status(profile):
    rng = np.random.default_rng(3)
    texts = _texts(FIN, 200, rng)
    cfg = DriftConfig(ignore=("confidence",))
    report = check_drift(
        profile, texts, confidences=[0.1] * 200, embedder=ToyEmbedder(), config=cfg
    )
    assert report.components["confidence"].status == ALERT and report.status == OK


def test_language_and_oov_heuristics():
    assert guess_language("The company said that its profit was up") == "en"
    assert (
        guess_language("Die Firma hat mehr Gewinn gemacht als im Vorjahr und ist zufrieden") == "de"
    )
    assert guess_language("Компания увеличила прибыль") == "non_latin"
    assert oov_rate(["alpha beta", "gamma"], {"alpha"}) == pytest.approx(2 / 3)


def test_write_run_profile(tmp_path):
    from honed.evals.profile import PROFILE_DIRNAME, write_run_profile

    rng = np.random.default_rng(5)
    rows = [{"text": t, "label": ["a", "b"][i % 2]} for i, t in enumerate(_texts(FIN, 120, rng))]
    path = write_run_profile(
        tmp_path,
        rows,
        predictions=["a"] * 30,
        confidences=[0.9] * 30,
        embedder=ToyEmbedder(),
        max_texts=100,
    )
    assert path == tmp_path / PROFILE_DIRNAME
    loaded = ReferenceProfile.load(path)
    assert loaded.meta["n"] == 100 and set(loaded.labels) == {"a", "b"}
    assert loaded.predictions == {"a": 1.0} and loaded.confidence["mean"] == pytest.approx(0.9)
    with pytest.raises(ProfileError, match="text fields"):
        write_run_profile(tmp_path, [{"body": "x"}], embedder=ToyEmbedder())
