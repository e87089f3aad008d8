"""The actor-critic family (DESIGN.md, "Layout for a family of algorithms"): REINFORCE, A2C and
PPO share one learner (`learner`), its networks (`networks`: feed-forward or recurrent) and its
loss terms (`losses`); each member is a module with its config and test settings."""
