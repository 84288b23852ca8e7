"""Team mirror: an S3 bucket shared by a studio (issue 14)."""
