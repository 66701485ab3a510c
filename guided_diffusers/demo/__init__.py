"""The quick start on scikit-learn's bundled digits (`make demo`)."""
