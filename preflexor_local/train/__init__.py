"""Training: preference data, PRefLexOR Phase I (ORPO) and Phase II (DPO/EXO with masked thinking).

Light at import: heavy engines (torch, TRL, PEFT, MLX) load inside functions.

The engine-agnostic core (torch-free): ``config`` (``TrainConfig``,
``GenerationConfig``: typed settings with ranges), ``data`` (JSONL format and
rendering), ``encode`` (tokenisation, length policy, tag ids, the training
template), ``masks`` (the one label-mask function), ``resolve`` (which model a
``--model`` names: a run folder means its merged model), ``generate``
(teacher/student pair generation), ``run`` (the active-learning loop, both
phases in one run) and ``session`` (what an engine provides). The engines are
thin adapters over it: ``trl/`` (compat, peft, trainers, session) and
``mlx/``, registered in ``engines/``.
"""
