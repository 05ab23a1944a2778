"""visionpipe package."""
