"""The clean stage: the step framework, the basic steps and the quality filters."""
