"""w23: the portfolio site built from the scorecard, its history and the learner's human-judged evidence."""
