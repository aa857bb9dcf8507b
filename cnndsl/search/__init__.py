"""Architecture search: spaces and their members (variants), the Optuna study (study) and the architecture hash."""
