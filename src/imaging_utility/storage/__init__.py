"""Where image bytes live: local files and split parts, S3 objects (DESIGN §8)."""
