"""Finds credential-shaped strings in text: configs, compiled specs and run logs must hold none."""

import re

# Well-known token shapes, plus secret-named settings assigned a literal value.
CREDENTIAL_PATTERNS = {
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "service account key": r"\"private_key(_id)?\"\s*:\s*\"[^\"]{8,}",
    "AWS access key": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "Google API key": r"\bAIza[0-9A-Za-z_\-]{35}\b",
    "Google OAuth token": r"\bya29\.[0-9A-Za-z_\-]{20,}",
    "GitHub token": r"\bgh[pousr]_[0-9A-Za-z]{36}\b",
    "Slack token": r"\bxox[abprs]-[0-9A-Za-z\-]{10,}",
    "URL with password": r"[a-z][a-z0-9+.\-]*://[^/\s:@]+:[^/\s:@]{3,}@",
    "secret setting": r"(?i)\b(password|passwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token)\b[\"']?\s*[:=]\s*[\"']?"
    r"(?!\s|None\b|null\b|\$|\{|<|os\.environ)[^\s\"',)]{8,}",
}


def find_credentials(text: str) -> list:
    """(kind, match) for every credential-like string in `text`."""
    return [
        (kind, m.group(0)[:40]) for kind, pattern in CREDENTIAL_PATTERNS.items() for m in re.finditer(pattern, text)
    ]
