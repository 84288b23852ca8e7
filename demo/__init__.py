"""`cfd demo`: the scripted story (story.py) and the local model server it downloads from."""
