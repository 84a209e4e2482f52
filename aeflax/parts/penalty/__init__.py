"""Penalty parts: terms added to the loss, each switched on by its weight (`penalty.<weight> > 0`)."""
