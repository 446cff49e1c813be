"""The chaos suite: labd under failures everywhere, losing nothing."""
