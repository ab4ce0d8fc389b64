"""Writing outputs: output sets that never lose a user's data, figures, explanation files."""
