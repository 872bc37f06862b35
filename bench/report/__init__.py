"""Result documents, their schema, and the dashboard that draws them."""
