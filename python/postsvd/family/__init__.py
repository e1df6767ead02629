"""The project's own small model family (base, base_alt, instruct, reasoning) and its task.

Needs torch and transformers for training; importing this package does not need
the compiled core. Modules: tasks (the addition task and its splits), corpus
(pretraining text and the tokenizer), train (the training run), check (NF and
scaling factors in numpy float64), card (the model card).
"""
