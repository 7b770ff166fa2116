"""The fault-and-bad-input suite (issue 10): one module per theme, each test asserts the outcome."""
