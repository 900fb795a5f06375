"""Comparisons: experiment files, expectations, options, the comparison itself and its report."""
