"""Zero-shot tags: label and template sets, tagging a store, classifying image files."""
