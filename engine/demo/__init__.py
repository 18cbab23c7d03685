"""The quick-start demo (``invites demo``): a practice played through on a compressed schedule."""
