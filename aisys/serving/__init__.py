"""Ray Serve application: the FastAPI gateway and the recommender deployment."""
