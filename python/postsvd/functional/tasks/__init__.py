"""lm-eval task configs of the paper's benchmarks (GSM8K, MATH-500, MMLU, GPQA); see benchmarks.py."""
