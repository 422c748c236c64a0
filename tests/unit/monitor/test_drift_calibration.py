"""Drift thresholds calibrated for the window size, on small synthetic embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from honed.evals.profile import ProfileConfig, ReferenceProfile, build_reference_profile
from honed.monitor import calibration
from honed.monitor.config import DriftConfig
from honed.monitor.drift import ALERT, INSUFFICIENT, OK, DriftReport, check_drift, psi

DIM = 16
WORDS = [
    "profit",
    "sales",
    "rose",
    "fell",
    "the",
    "company",
    "said",
    "net",
    "quarter",
    "shares",
    "bank",
    "results",
]
OFF_WORDS = [
    "write",
    "poem",
    "ocean",
    "bake",
    "bread",
    "explain",
    "recipe",
    "story",
    "moon",
    "flour",
]
# Fewer null draws than the defaults: same code, a faster test.
FAST = {"calibration_draws": 40, "classifier_draws": 20}


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class World:
    """In-domain rows: a mixture of 4 topics; off-domain rows: another direction."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.centers = self.rng.standard_normal((4, DIM)) * 2
        self.off_center = self.rng.standard_normal(DIM) * 2

    def rows(self, n, off=False):
        if off:
            emb = self.off_center + self.rng.standard_normal((n, DIM))
            words = OFF_WORDS
        else:
            emb = self.centers[self.rng.integers(0, 4, n)] + self.rng.standard_normal((n, DIM))
            words = WORDS
        texts = [" ".join(self.rng.choice(words, self.rng.integers(6, 14))) for _ in range(n)]
        return texts, _unit(emb)


@pytest.fixture(scope="module")
def world():
    return World()


@pytest.fixture(scope="module")
def profile(world):
    texts, emb = world.rows(1200)
    labels = [["a", "b", "c"][i % 3] for i in range(1200)]
    return build_reference_profile(
        texts,
        labels=labels,
        predictions=labels[:300],
        confidences=np.full(300, 0.9),
        embeddings=emb,
        config=ProfileConfig(n_clusters=6, n_components=4, sample_size=600),
    )


def _check(profile, texts, emb, **cfg):
    return check_drift(profile, texts, embeddings=emb, config=DriftConfig(**{**FAST, **cfg}))


def test_profile_keeps_a_held_out_calibration_sample(profile, tmp_path):
    assert profile.meta["calibration_n"] == 300 and profile.meta["predictions_n"] == 300
    assert profile.calibration_embeddings.shape == (300, DIM)
    assert profile.calibration_words.min() >= 6
    loaded = ReferenceProfile.load(profile.save(tmp_path / "p"))
    np.testing.assert_array_equal(loaded.calibration_languages, profile.calibration_languages)
    assert calibration.has_sample(loaded)


def test_null_draws_are_cached_beside_a_saved_profile(profile, world, tmp_path):
    texts, emb = world.rows(70)
    folder = profile.save(tmp_path / "saved")
    first = _check(ReferenceProfile.load(folder), texts, emb)
    assert len(list((folder / calibration.CACHE_DIRNAME).glob("*.npz"))) == 1
    again = _check(ReferenceProfile.load(folder), texts, emb)  # a later run: read back
    assert again.to_dict()["components"] == first.to_dict()["components"]


def test_in_domain_windows_of_the_minimum_size_do_not_alarm(profile, world):
    calibrated = fixed = 0
    for _ in range(12):
        texts, emb = world.rows(50)
        report = _check(profile, texts, emb)
        calibrated += report.status == ALERT
        fixed += _check(profile, texts, emb, calibrate=False).status == ALERT
    assert calibrated == 0
    assert fixed >= 6  # what the fixed thresholds did on windows this small


def test_a_thirty_percent_mix_is_detected_at_the_minimum_size(profile, world):
    texts, emb = world.rows(35)
    off_texts, off_emb = world.rows(15, off=True)
    report = _check(profile, texts + off_texts, np.concatenate([emb, off_emb]))
    assert report.status == ALERT
    assert report.components["novelty"].status == ALERT
    assert report.components["novelty"].details["null"]["p_value"] < 1e-3


def test_thresholds_follow_the_window_size(profile, world):
    small = _check(profile, *world.rows(50))
    large = _check(profile, *world.rows(200))
    for name in ("embedding_cells", "embedding_pca", "domain_classifier", "text_length"):
        assert small.components[name].alert > large.components[name].alert, name
    cells = large.components["embedding_cells"]
    assert cells.alert == max(cells.details["null"]["calibrated_alert"], 0.2)  # fixed floor
    assert large.calibration["null_window"] == 200 and large.calibration["components"] == 7
    assert sum(large.calibration["alpha_share"].values()) == pytest.approx(1.0)
    # round trip through the stored JSON
    assert DriftReport.from_dict(large.to_dict()).calibration == large.calibration


def test_insufficient_data_and_expected_traffic(profile, world):
    texts, emb = world.rows(30, off=True)  # blatant drift, but too few requests
    assert _check(profile, texts, emb).status == INSUFFICIENT
    empty = check_drift(profile, [], config=DriftConfig(expect_traffic=True))
    assert empty.status == ALERT and list(empty.components) == ["traffic"]
    assert check_drift(profile, []).status == INSUFFICIENT


def test_predictions_are_calibrated_for_their_count(profile, world):
    texts, emb = world.rows(60)
    rng = np.random.default_rng(1)
    fair = list(rng.choice(["a", "b", "c"], 60))
    report = check_drift(
        profile, texts, embeddings=emb, predictions=fair, config=DriftConfig(**FAST)
    )
    assert report.components["predictions"].status == OK
    skewed = ["a"] * 50 + ["b"] * 10
    report = check_drift(
        profile, texts, embeddings=emb, predictions=skewed, config=DriftConfig(**FAST)
    )
    assert report.components["predictions"].status == ALERT


def test_profile_without_a_calibration_sample_says_so(world):
    texts, emb = world.rows(400)
    legacy = build_reference_profile(
        texts, embeddings=emb, config=ProfileConfig(n_clusters=4, calibration_size=0)
    )
    assert not calibration.has_sample(legacy)
    report = _check(legacy, *world.rows(100))
    assert "novelty" not in report.components
    assert "no calibration sample" in report.calibration["reason"]
    assert report.components["embedding_cells"].alert == 0.2  # the fixed threshold


def test_vectorised_null_matches_the_live_statistics():
    rng = np.random.default_rng(0)
    counts = calibration._dirichlet_multinomial(rng, np.array([30.0, 10.0, 60.0]), 50)
    assert counts.shape == (50_000, 3) and (counts.sum(1) == 50).all()
    reference = np.array([0.3, 0.1, 0.6])
    window = counts[:5] / 50
    expected = [psi(reference, w, 0.01) for w in window]
    np.testing.assert_allclose(calibration._psi(reference, window, 0.01), expected, rtol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="warn_rate"):
        DriftConfig(false_alarm_rate=0.05, warn_rate=0.01)
    with pytest.raises(ValueError, match="ignore"):
        DriftConfig(ignore=("nope",))
