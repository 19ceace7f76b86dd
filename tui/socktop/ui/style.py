"""The layout and colours of the app (Textual CSS), kept in Python so every install ships it."""

CSS = """
/* socktop layout. The app carries -wide (>= 140 columns), -narrow (tabs), -tiny (< 60x15),
   -drawer (details open) and -filtering (filter field open). */

Screen {
    layout: vertical;
}

#tabs {
    display: none;
    height: 2;
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
#top-row { height: 2fr; }
#bottom-row { height: 3fr; }
#states { width: 45; }
.-drawer #states { width: 1fr; }  /* with the drawer open the three panes share what is left */
#ports { width: 1fr; }
#processes { width: 1.5fr; }
#sockets { width: 2fr; max-width: 120; }  /* every column, a 30-cell owner: the rest for findings */
#findings { width: 1fr; }

/* narrow: one pane at a time, chosen by tab, 1..5 or Tab */
.-narrow #tabs {
    display: block;
}

.-narrow .row, .-narrow .pane {
    display: none;
}

.-narrow .row.-has-active {
    display: block;
    height: 1fr;
}

.-narrow .pane.-active {
    display: block;
    height: 1fr;
}

.-narrow #states, .-narrow #ports, .-narrow #processes, .-narrow #sockets, .-narrow #findings {
    width: 1fr;
}

.-narrow #trends {
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

.-narrow.-drawer #drawer {
    width: 1fr;
    max-width: 100%;
}

.-narrow.-drawer #main {
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

.-tiny #topbar, .-tiny #trends, .-tiny #filterline, .-tiny #tabs, .-tiny #body, .-tiny #keybar, .-tiny #filter {
    display: none;
}
"""
