"""`custom_dataset` functions of the offline tasks in this folder; the builders live in `zoo.evals.lm_eval.tasks`.

lm-eval calls each with the task's `metadata` block merged with `--metadata` (and the model args) as keywords.
"""

from zoo.evals.lm_eval.tasks import load


def mqar(**metadata):
    return load("mqar", **metadata)


def passkey(**metadata):
    return load("passkey", **metadata)


def ppl(**metadata):
    return load("ppl", **metadata)
