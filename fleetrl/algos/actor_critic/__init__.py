"""The actor-critic family (DESIGN.md, "Layout for a family of algorithms"): REINFORCE, A2C, PPO
and IMPALA share one learner (`learner`), its networks (`networks`: feed-forward or recurrent),
its advantage estimators (`targets`: GAE, V-trace) and its loss terms (`losses`); each member
is a module with its config and test settings."""
