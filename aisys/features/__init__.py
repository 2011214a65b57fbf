"""Point-in-time features shared by training and serving."""
