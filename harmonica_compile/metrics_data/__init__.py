"""Data files of the evaluator (the digit classifier's weights), and the script that makes them."""
