"""Robustness and structure: l2 attacks, Lipschitz certificates, and structure measurements."""
