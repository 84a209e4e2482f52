"""TFDS builders for data this project can prepare without the internet."""
