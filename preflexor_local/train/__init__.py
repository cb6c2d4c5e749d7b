"""Training: preference data, PRefLexOR Phase I (ORPO) and Phase II (DPO/EXO with masked thinking).

Light at import: heavy engines (torch, TRL, PEFT, MLX) load inside functions.
Public pieces: ``masks`` (the one label-mask function), ``data`` (JSONL format and
rendering), ``config.TrainConfig``, ``engines`` (registry), ``run.train`` (the
active-learning loop) and ``generate`` (teacher/student pair generation).
"""
