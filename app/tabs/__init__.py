"""One module per tab; each has `build(ctx)` and registers its redraw in `ctx.on_trace`."""
