"""Secrets found in plain strings by detect-secrets' plugins, and redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from honed.security.secrets import SecretSpan, find_secrets, redact_secrets

AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
GITHUB = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
SLACK = "xoxb-123456789012-1234567890123-abcdefghijABCDEFGHIJklmn"
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("secret", "kind"),
    [
        (AWS_ID, "AWS Access Key"),
        (AWS_SECRET, "Base64 High Entropy String"),
        (JWT, "JSON Web Token"),
        (GITHUB, "GitHub Token"),
        (SLACK, "Slack Token"),
        (PRIVATE_KEY, "Private Key"),
    ],
)
def test_each_secret_is_found_whole_and_redacted(secret, kind):
    text = f"Deploy notes: use {secret} for the staging job."
    spans = find_secrets(text)
    start = text.index(secret)
    assert spans == [SecretSpan(kind, start, start + len(secret))]
    assert redact_secrets(text) == "Deploy notes: use [SECRET] for the staging job."


def test_aws_key_pair_in_one_sentence():
    text = f"aws id {AWS_ID} secret {AWS_SECRET}."
    out = redact_secrets(text)
    assert out == "aws id [SECRET] secret [SECRET]."
    assert "EXAMPLE" not in out


def test_ordinary_sentences_are_not_flagged():
    sentences = [
        "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period.",
        "The internationalization of telecommunications-infrastructure companies continued.",
        "Order https://example.com/products/2024/catalogue-page?id=12345 before 31.12.2008.",
        "Reference number 1234567890123456789 and ISIN FI0009000681 were quoted.",
    ]
    for sentence in sentences:
        assert find_secrets(sentence) == [], sentence


def test_no_false_secret_in_phrasebank():
    path = Path(__file__).parents[3] / ".." / "shared" / "data" / "financial_phrasebank"
    path = path / "Sentences_AllAgree.txt"
    if not path.is_file():
        pytest.skip("shared PhraseBank not available")
    lines = path.read_text(encoding="iso-8859-1").splitlines()
    assert [line for line in lines if find_secrets(line)] == []


def test_empty_and_overlaps():
    assert find_secrets("") == []
    # The AWS pattern and the entropy check both see the key id: one span, not two.
    assert len(find_secrets(f"key={AWS_ID}")) == 1
