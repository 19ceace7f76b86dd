"""The layout and colours of the app (Textual CSS), kept in Python so every install ships it."""

CSS = """
/* socktop layout. The app carries one size class, -wide (>= 140x34), -medium (>= 100x28), -small or
   -tiny (< 60x15), and -drawer (details open), -filtering (filter field open). In medium and small the
   app marks the panes (and rows) it shows with -shown, and sets the rows' heights (app._arrange). */

Screen {
    layout: vertical;
}

#tabline, #strip {
    display: none;
}

#body {
    height: 1fr;
}

#main {
    width: 1fr;
    height: 1fr;
}

.pane {
    height: 1fr;
    border: round $panel-lighten-2;
    border-title-color: $text-muted;
    border-subtitle-color: $text-muted;
    background: $surface;
    scrollbar-size: 1 1;
}

.pane:focus {
    border: round $accent;
    border-title-color: $accent;
    border-title-style: bold;
}

Pane > .pane--warning { color: $warning; text-style: bold; }
Pane > .pane--danger { color: $error; text-style: bold; }
Pane > .pane--muted { color: $text-muted; }
Pane > .pane--good { color: $success; }
Pane > .pane--accent { color: $accent; }

/* wide: the three aggregate panes side by side, the sockets and findings below */
#states { width: 45; }
.-drawer #states { width: 1fr; }  /* with the drawer open the three panes share what is left */
#ports { width: 1fr; }
#processes { width: 1.5fr; }
#sockets { width: 2fr; max-width: 120; }  /* every column, a 30-cell owner: the rest for findings */
#findings { width: 1fr; }

/* medium and small: the findings strip and the tab line; only the panes marked -shown */
.-medium #tabline, .-small #tabline, .-medium #strip, .-small #strip {
    display: block;
}

.-medium .row, .-medium .pane, .-small .row, .-small .pane {
    display: none;
}

.-medium .row.-shown, .-medium .pane.-shown, .-small .row.-shown, .-small .pane.-shown {
    display: block;
}

.-medium #ports, .-medium #processes, .-medium #sockets, .-medium #findings {
    width: 1fr;
    max-width: 100%;
}

/* small: one column, States above the other pane */
.-small #top-row {
    layout: vertical;
}

.-small #states, .-small #ports, .-small #processes, .-small #sockets, .-small #findings {
    width: 1fr;
    max-width: 100%;
}

.-small #trends {
    display: none;
}

#drawer {
    display: none;
    width: 36%;
    min-width: 44;
    max-width: 76;
    border: round $accent;
    border-title-color: $accent;
    background: $surface;
    padding: 0 1;
    scrollbar-size: 1 1;
}

#drawer > .drawer--title { text-style: bold; color: $text; }
#drawer > .drawer--heading { text-style: bold; color: $accent; }
#drawer > .drawer--muted { color: $text-muted; }
#drawer > .drawer--warning { color: $warning; text-style: bold; }
#drawer > .drawer--danger { color: $error; text-style: bold; }
#drawer > .drawer--command { color: $success; text-style: bold; }
#drawer > .drawer--key { background: $accent; color: $background; text-style: bold; }

.-drawer #drawer {
    display: block;
}

.-small.-drawer #drawer {
    width: 1fr;
    max-width: 100%;
}

.-small.-drawer #main {
    display: none;
}

#filter {
    display: none;
    dock: bottom;
    margin-bottom: 1;
    height: 3;
}

#too-small {
    display: none;
    width: 1fr;
    height: 1fr;
    content-align: center middle;
    text-style: bold;
}

.-tiny #too-small {
    display: block;
}

.-tiny #topbar, .-tiny #strip, .-tiny #trends, .-tiny #filterline, .-tiny #tabline, .-tiny #body, .-tiny #keybar, .-tiny #filter {
    display: none;
}
"""
