"""Trust over time: the card's reference, drift, late labels, alerts."""
