"""The bundled model family's development package: the four models in examples/models (base, base_alt,
instruct, reasoning) and the LoRA adapter instruct_lora, their task and how they were made. It sits beside
the models and is not part of the installed postsvd; run its modules from the repository root with
``PYTHONPATH=examples``, e.g.
``PYTHONPATH=examples python -m postsvd_family.evaluate examples/models/instruct --n 50``.

Modules: tasks (the addition task and its splits), evaluate (greedy exact-match accuracy), corpus
(pretraining text and the tokenizer), train (the training run), check (NF, scaling factors and intruder
dimensions in numpy float64), card (the model card), reproduce (the paper's Tables 1, 2, 3 and 7 at the
family's scale). Importing the package needs neither torch nor the compiled core; evaluate and train need
torch and transformers (and peft for the adapter), reproduce and evaluate need postsvd.
"""
