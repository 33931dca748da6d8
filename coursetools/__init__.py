"""Course author's tools: generate notebooks, the book and the nbgrader tree from content/."""
