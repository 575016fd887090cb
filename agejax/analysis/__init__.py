"""What a finished (or failed) run shows: its curves, diagnoses and comparisons (``agejax.report``)."""
