"""Evaluations: the recall suite, the lm-eval adapter and offline tasks, the end-of-training self-evaluation
and the `zoo-eval` command (`cli`)."""
