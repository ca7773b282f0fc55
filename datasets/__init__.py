"""Second floor: competition JSON, downloader, image validation + manifest, folds, demo data."""
