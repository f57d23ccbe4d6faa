"""lm-eval integration: the `zoo` model type (`adapter`), runs on a loaded model (`run`), the offline tasks
(`tasks`) and `python -m zoo.lm_eval` (`cli`). Importing this package imports nothing from lm-eval."""
