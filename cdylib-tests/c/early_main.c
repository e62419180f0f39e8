/* Issue 8 item 4: the program linked against libearly.so (whose constructor connects); main()
 * then makes the same flows itself, as a control. */
void early_flows(const char *who);
int main(void) {
    early_flows("main");
    return 0;
}
